"""POROver (Karaman et al., ICML 2025): preference data from the student's over-refusals.

- `pairs`: the over-refusal pairs and safety anchors from judged samples (pure functions).
- `stage`: the ``preference_data`` stage: sample the student, judge, pair, filter (CHES optional).

Overgeneration and selection of teacher completions (the paper's SFT data) are the shared ``overgenerate``
stage (`porover.stages.overgenerate`, `porover.selection`); training on the pairs is the shared
``preference_optimization`` stage.
"""
