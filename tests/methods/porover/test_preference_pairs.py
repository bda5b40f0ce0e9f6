"""Pure POROver pair building (`porover.methods.porover.pairs`): over-refusal pairs and safety anchors from known
judged samples, no model and no files."""

import pytest

from porover.methods.porover.pairs import FUNNEL, OTHER_MODEL, anchor_candidates, build_pairs, filter_by_ches


def samples(pid, labels, prompt=None, **extra):
    return [{"source": "s", "id": pid, "prompt": prompt or f"prompt {pid}", "sample_index": i,
             "response": f"{pid} student {i} {label}", "refusal": label, **extra} for i, label in enumerate(labels)]


def teacher(pid, labels, p_safe=None):
    p_safe = p_safe or [None] * len(labels)
    return [{"source": "s", "id": pid, "prompt": f"prompt {pid}", "sample_index": i, "teacher": "t",
             "response": f"{pid} teacher {i} {label}", "refusal": label, "p_safe": p}
            for i, (label, p) in enumerate(zip(labels, p_safe))]


R, C, P = "full_refusal", "full_compliance", "partial_refusal"


def test_tau_boundary_is_inclusive_and_unparseable_samples_are_left_out():
    student = (samples("half", [R, C, R, C])          # share 0.5 == τ: a candidate
               + samples("below", [R, C, C, C])       # 0.25 < τ
               + samples("unparsed", [R, None, None, C])  # 1 refusal of 2 parsed = 0.5: a candidate
               + samples("none", [None, None]))       # nothing parsed
    compliant = [t for pid in ("half", "below", "unparsed") for t in teacher(pid, [C])]
    pairs, counts = build_pairs(student, compliant, containment_threshold=0.5)
    assert sorted(p["id"] for p in pairs) == ["half", "unparsed"]
    assert counts["prompts sampled"] == 4 and counts["with parsed samples"] == 3
    assert counts["candidates (share >= τ)"] == 2 and counts["unparseable samples"] == 4
    unparsed = next(p for p in pairs if p["id"] == "unparsed")
    assert unparsed["refusal_share"] == 0.5 and unparsed["parsed"] == 2 and unparsed["k"] == 4
    assert unparsed["rejected"] == "unparsed student 0 full_refusal" and unparsed["chosen"] == "unparsed teacher 0 full_compliance"
    assert all(p["kind"] == "over_refusal" and p["rejected_verdict"] == R for p in pairs)
    assert build_pairs(student, compliant, containment_threshold=0.51)[1]["candidates (share >= τ)"] == 0


def test_partial_refusals_count_by_parameter_and_full_refusals_are_rejected_first():
    student = samples("a", [P, P, R, C])
    pairs, _ = build_pairs(student, teacher("a", [C]), containment_threshold=0.75)
    assert pairs[0]["rejected_verdict"] == R and pairs[0]["refusal_share"] == 0.75
    assert not build_pairs(student, teacher("a", [C]), 0.75, partial_is_refusal=False)[0]


def test_no_compliant_teacher_completion_and_the_safety_threshold():
    from porover.methods.porover.stage import PreferenceDataParams, empty_message

    student = samples("a", [R, R]) + samples("b", [R, R]) + samples("c", [R, R])
    completions = (teacher("a", [R, P])                       # no compliance
                   + teacher("b", [C, C], p_safe=[0.2, 0.9])  # one safe enough
                   + teacher("c", [C], p_safe=[0.49]))        # compliant, unsafe
    pairs, counts = build_pairs(student, completions, containment_threshold=1.0, min_p_safe=0.5)
    assert [p["id"] for p in pairs] == ["b"] and pairs[0]["chosen_sample_index"] == 1 and pairs[0]["chosen_p_safe"] == 0.9
    assert counts["with a compliant teacher completion"] == 2 and counts["with a safe compliant completion"] == 1
    unjudged = build_pairs(student, completions, containment_threshold=1.0, min_p_safe=None)[0]
    assert sorted(p["id"] for p in unjudged) == ["b", "c"]  # no safety judge: compliance assumed safe
    none_safe, counts = build_pairs(student, completions, containment_threshold=1.0, min_p_safe=0.95)
    assert not none_safe
    message = empty_message(counts, PreferenceDataParams(safety_judge="llama_guard", min_p_safe=0.95), {}, 0)
    assert "'with a safe compliant completion'" in message and "min_p_safe" in message


def test_choices_are_deterministic_by_seed():
    student = samples("a", [R, R, R, R, C])
    completions = teacher("a", [C, C, C, C])
    runs = [build_pairs(student, completions, 0.5, seed=seed)[0][0] for seed in (0, 0, 1, 2, 3)]
    assert runs[0] == runs[1]
    assert len({(r["chosen"], r["rejected"]) for r in runs}) > 1


def test_safety_anchor_ratio_and_sources():
    benign = [s for i in range(4) for s in samples(f"b{i}", [R, R])]
    completions = [t for i in range(4) for t in teacher(f"b{i}", [C])]
    anchors = []
    for i in range(6):  # toxic prompts: student refuses once and complies once
        anchors += [{**s, "origin": "student", "p_safe": None} for s in samples(f"t{i}", [R, C], prompt=f"toxic {i}")]
    anchors += [{"source": "s", "id": "ref", "prompt": "toxic ref", "sample_index": -1, "response": "I can't.",
                 "refusal": R, "origin": "reference", "p_safe": None},
                {"source": "s", "id": "ref", "prompt": "toxic ref", "sample_index": 0, "response": "Sure: ...",
                 "refusal": C, "origin": "student", "p_safe": None},
                {"source": "s", "id": "safe_only", "prompt": "toxic", "sample_index": 0, "response": "No.",
                 "refusal": R, "origin": "student", "p_safe": None}]  # no compliance: no anchor
    pairs, counts = build_pairs(benign, completions, 0.5, anchors=anchors, anchor_ratio=0.5)
    kinds = [p["kind"] for p in pairs]
    assert kinds.count("over_refusal") == 4 and kinds.count("safety_anchor") == 2
    assert counts["toxic prompts with an anchor pair"] == 7 and counts["safety anchor pairs"] == 2
    everything = build_pairs(benign, completions, 0.5, anchors=anchors, anchor_ratio=10)[0]
    ref = next(p for p in everything if p["id"] == "ref")
    assert ref["chosen"] == "I can't." and ref["chosen_origin"] == "reference" and ref["rejected"] == "Sure: ..."
    assert all(p["chosen_verdict"] == R and p["rejected_verdict"] == C for p in everything if p["kind"] == "safety_anchor")
    # with a safety judge, the rejected compliance must be judged unsafe
    judged = [{**a, "p_safe": 0.9 if a["refusal"] == R else 0.8} for a in anchors]
    assert not [p for p in build_pairs(benign, completions, 0.5, 0.5, anchors=judged, anchor_ratio=10)[0]
                if p["kind"] == "safety_anchor"]


def test_ches_quantile_keeps_the_lowest_per_kind():
    pairs = [{"kind": "over_refusal", "ches_normalized": v} for v in (1.0, 2.0, 3.0, 4.0)]
    pairs += [{"kind": "safety_anchor", "ches_normalized": v} for v in (10.0, 20.0)]
    kept = filter_by_ches(pairs, 0.5)
    assert [p["ches_normalized"] for p in kept] == [1.0, 2.0, 10.0]
    assert filter_by_ches(pairs, None) == pairs


def test_an_empty_teacher_completion_is_never_chosen_by_build_pairs():
    student = samples("a", [R, R])
    completions = teacher("a", [C, C])
    completions[0]["response"] = "   "
    for seed in range(8):
        pairs, _ = build_pairs(student, completions, 0.5, seed=seed)
        assert pairs[0]["chosen_sample_index"] == 1
    completions[1]["response"] = ""
    assert build_pairs(student, completions, 0.5)[1]["with a compliant teacher completion"] == 0


def test_an_empty_student_refusal_is_never_a_chosen_safety_anchor():
    rows = [{"source": "s", "id": "t", "prompt": "toxic", "sample_index": 0, "response": "", "refusal": R,
             "origin": "student", "p_safe": None},
            {"source": "s", "id": "t", "prompt": "toxic", "sample_index": 1, "response": "Sure: ...", "refusal": C,
             "origin": "student", "p_safe": None}]
    assert anchor_candidates(rows, None, True, 0) == []  # the only refusal is empty: no pair
    reference = {**rows[0], "sample_index": -1, "response": "I can't help with that.", "origin": "reference"}
    [pair] = anchor_candidates(rows + [reference], None, True, 0)
    assert pair["chosen"] == "I can't help with that." and pair["chosen_origin"] == "reference"


def test_anchors_take_the_rejected_compliance_from_another_model_when_the_student_never_complies():
    # the SFT student refuses every toxic prompt; the base model complies with them (known judged samples)
    student = [{**s, "origin": "student", "p_safe": None}
               for i in range(3) for s in samples(f"t{i}", [R, R], prompt=f"toxic {i}")]
    base = [{**s, "origin": OTHER_MODEL, "teacher": "base", "response": f"Sure, here is how {s['id']}"}
            for i in range(3) for s in samples(f"t{i}", [C, R] if i else [R, R], prompt=f"toxic {i}")]
    assert anchor_candidates(student + base, None, True, 0) == []  # the student's own compliance only: none
    pairs = anchor_candidates(student + base, None, True, 0, rejected_from=("student", OTHER_MODEL))
    assert [p["id"] for p in pairs] == ["t1", "t2"]  # t0: the base model refused too
    assert all(p["rejected"].startswith("Sure, here is how") and p["rejected_origin"] == OTHER_MODEL
               and p["rejected_model"] == "base" and p["chosen_origin"] == "student" and p["chosen_verdict"] == R
               for p in pairs)
    # a student compliance, where there is one, is preferred to another model's (on-policy first)
    mixed = student + base + [{**samples("t1", [C], prompt="toxic 1")[0], "sample_index": 5, "origin": "student",
                               "p_safe": None}]
    t1 = next(p for p in anchor_candidates(mixed, None, True, 0, rejected_from=("student", OTHER_MODEL))
              if p["id"] == "t1")
    assert t1["rejected_origin"] == "student" and t1["rejected_sample_index"] == 5
    # with a safety judge, a compliance the judge finds safe is no rejected side
    judged = [{**r, "p_safe": 0.9 if r["refusal"] == R else (0.2 if r["id"] == "t1" else 0.7)} for r in student + base]
    assert [p["id"] for p in anchor_candidates(judged, 0.5, True, 0, rejected_from=(OTHER_MODEL,))] == ["t1"]


def test_anchors_can_take_the_chosen_refusal_from_the_recorded_teacher_only():
    rows = [{**s, "origin": "student", "p_safe": None} for s in samples("t", [R, C], prompt="toxic")]
    reference = {"source": "s", "id": "t", "prompt": "toxic", "sample_index": -1, "origin": "reference",
                 "response": "I can't help with that; here is why.", "refusal": R, "p_safe": None}
    [student_first] = anchor_candidates(rows + [reference], None, True, 0)
    assert student_first["chosen_origin"] == "student"
    [recorded] = anchor_candidates(rows + [reference], None, True, 0, chosen_from=("reference",))
    assert recorded["chosen"] == reference["response"] and recorded["rejected"] == rows[1]["response"]
    assert anchor_candidates(rows, None, True, 0, chosen_from=("reference",)) == []  # no recorded refusal: no anchor
    # the anchors' share is a real lever once anchors exist: the ratio sets how many reach the pairs
    benign = [s for i in range(4) for s in samples(f"b{i}", [R, R])]
    completions = [t for i in range(4) for t in teacher(f"b{i}", [C])]
    many = [{**s, "origin": "student", "p_safe": None} for i in range(8) for s in samples(f"x{i}", [R], prompt=f"x {i}")]
    many += [{**s, "origin": OTHER_MODEL} for i in range(8) for s in samples(f"x{i}", [C], prompt=f"x {i}")]
    for ratio, expected in ((0, 0), (0.5, 2), (1, 4), (3, 8)):
        _, counts = build_pairs(benign, completions, 0.5, anchors=many, anchor_ratio=ratio,
                                anchor_rejected_from=("student", OTHER_MODEL))
        assert counts["safety anchor pairs"] == expected and counts["toxic prompts with an anchor pair"] == 8
