"""CHES filtering (Razin et al., arXiv 2410.08847): how alike a preference pair looks to the model.

- `scores`: CHES and its length-normalised form from final-layer hidden states; the ``preference_data``
  stage (`porover.methods.porover.stage`) keeps the lowest-scoring pairs when asked to.
"""
