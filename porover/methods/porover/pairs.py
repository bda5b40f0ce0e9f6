"""POROver's preference pairs from judged samples: pure functions, no model and no files.

Over-refusal pairs: on a benign prompt the student refuses in a share >= τ of its samples; chosen = a safe
teacher compliance, rejected = one of the student's refusals. Safety anchors: on a toxic prompt, chosen = a
safe refusal, rejected = an unsafe compliance; each side comes from the *origins* asked for, in order of
preference (the student's own samples, the dataset's recorded reference response, another model of the
run such as the base model, which complies with almost everything), so anchors exist even when the student
itself rarely complies with toxic prompts.
"""

from __future__ import annotations

import random

from porover.selection import is_empty
from porover.vocabulary import is_refusal

STUDENT_FIRST = ("student", "reference")  # anchor origins, in order of preference
OTHER_MODEL = "anchor_model"  # origin of another model's samples (`anchor_rejected_from`)


FUNNEL = ("prompts sampled", "with parsed samples", "candidates (share >= τ)", "with a compliant teacher completion",
          "with a safe compliant completion", "pairs")


def refusal_shares(samples: list[dict], partial_is_refusal: bool = True) -> dict[tuple, dict]:
    """Per (source, id): samples, parsed samples, refusals and their share among parsed samples (None if none)."""
    shares: dict[tuple, dict] = {}
    for s in samples:
        entry = shares.setdefault((s["source"], s["id"]), {"samples": 0, "parsed": 0, "refusals": 0})
        entry["samples"] += 1
        refused = is_refusal(s["refusal"], partial_is_refusal)
        entry["parsed"] += refused is not None
        entry["refusals"] += bool(refused)
    for entry in shares.values():
        entry["share"] = entry["refusals"] / entry["parsed"] if entry["parsed"] else None
    return shares


def _is_safe(row: dict, min_p_safe: float | None) -> bool:
    return min_p_safe is None or (row.get("p_safe") is not None and row["p_safe"] >= min_p_safe)


def _pick(rows: list[dict], seed: int, key: tuple) -> dict:
    """A seeded choice per prompt: full refusals before partial ones, then at random."""
    best = [r for r in rows if r["refusal"] == "full_refusal"] or rows
    return random.Random(f"{seed}/{key}").choice(sorted(best, key=lambda r: (r.get("origin", ""), r["sample_index"])))


def build_pairs(student: list[dict], teacher: list[dict], containment_threshold: float, min_p_safe: float | None = None,
                partial_is_refusal: bool = True, seed: int = 0, anchors: list[dict] = (),
                anchor_ratio: float = 0.0, anchor_chosen_from: tuple[str, ...] = STUDENT_FIRST,
                anchor_rejected_from: tuple[str, ...] = ("student",)) -> tuple[list[dict], dict]:
    """Preference pairs from judged samples (pure: no model, no files).

    Args:
        student: The student's samples on benign prompts: ``source, id, prompt, sample_index, response, refusal``
            (a class, or None when the judge could not parse it).
        teacher: Teacher completions for candidates: the same keys plus ``p_safe`` (None = not judged).
        containment_threshold: τ; a prompt is a candidate when refusals / parsed samples >= τ.
        min_p_safe: P(safe) a chosen (and, for anchors, a refusal) needs; None = no safety judge, every
            compliance to a benign prompt is assumed safe and every compliance to a toxic prompt unsafe.
        partial_is_refusal: Count partial refusals as refusals.
        seed: Seed of the per-prompt choices.
        anchors: Judged responses to toxic prompts (with ``origin`` and ``p_safe``, see `anchor_candidates`).
        anchor_ratio: Safety-anchor pairs per over-refusal pair (at most as many as the anchors allow).
        anchor_chosen_from, anchor_rejected_from: Origins of the anchors' two sides (`anchor_candidates`).

    Returns:
        ``(pairs, counts)``: pairs with provenance, and how many prompts passed each filter (`FUNNEL`).
    """
    shares = refusal_shares(student, partial_is_refusal)
    by_prompt: dict[tuple, list[dict]] = {}
    for row in teacher:
        by_prompt.setdefault((row["source"], row["id"]), []).append(row)
    counts = dict.fromkeys(FUNNEL, 0)
    counts["prompts sampled"] = len(shares)
    counts["unparseable samples"] = sum(s["refusal"] is None for s in student)
    pairs = []
    for key, entry in shares.items():
        counts["with parsed samples"] += entry["parsed"] > 0
        if entry["share"] is None or entry["share"] < containment_threshold:
            continue
        counts["candidates (share >= τ)"] += 1
        compliant = [t for t in by_prompt.get(key, []) if t["refusal"] == "full_compliance" and not is_empty(t)]
        counts["with a compliant teacher completion"] += bool(compliant)
        safe = [t for t in compliant if _is_safe(t, min_p_safe)]
        counts["with a safe compliant completion"] += bool(safe)
        if not safe:
            continue
        refusals = [s for s in student if (s["source"], s["id"]) == key and is_refusal(s["refusal"], partial_is_refusal)]
        chosen, rejected = random.Random(f"{seed}/{key}").choice(safe), _pick(refusals, seed, key)
        pairs.append({"prompt": rejected["prompt"], "chosen": chosen["response"], "rejected": rejected["response"],
                      "kind": "over_refusal", "source": key[0], "id": key[1], "category": rejected.get("category"),
                      "refusal_share": entry["share"], "k": entry["samples"], "parsed": entry["parsed"],
                      "teacher": chosen.get("teacher"), "chosen_sample_index": chosen["sample_index"],
                      "chosen_finish_reason": chosen.get("finish_reason"),
                      "rejected_sample_index": rejected["sample_index"], "chosen_verdict": chosen["refusal"],
                      "rejected_verdict": rejected["refusal"], "chosen_p_safe": chosen.get("p_safe"),
                      "teacher_completions": len(by_prompt[key]), "teacher_compliant": len(compliant),
                      "teacher_safe": len(safe)})
    counts["pairs"] = len(pairs)
    anchor_pairs = anchor_candidates(anchors, min_p_safe, partial_is_refusal, seed, anchor_chosen_from,
                                     anchor_rejected_from)
    counts["toxic prompts"] = len({(a["source"], a["id"]) for a in anchors})
    counts["toxic prompts with an anchor pair"] = len(anchor_pairs)
    wanted = min(len(anchor_pairs), round(anchor_ratio * len(pairs)))
    anchor_pairs = random.Random(seed).sample(anchor_pairs, wanted)
    counts["safety anchor pairs"] = len(anchor_pairs)
    return pairs + sorted(anchor_pairs, key=lambda p: (p["source"], p["id"])), counts


def _first_origin(rows: list[dict], origins: tuple[str, ...]) -> list[dict]:
    """The rows of the first origin in ``origins`` that has any."""
    return next(([r for r in rows if r["origin"] == origin] for origin in origins
                 if any(r["origin"] == origin for r in rows)), [])


def anchor_candidates(anchors: list[dict], min_p_safe: float | None, partial_is_refusal: bool, seed: int,
                      chosen_from: tuple[str, ...] = STUDENT_FIRST,
                      rejected_from: tuple[str, ...] = ("student",)) -> list[dict]:
    """One safety-anchor pair per toxic prompt with a safe refusal and an unsafe compliance.

    Args:
        anchors: Judged responses to toxic prompts, each with ``origin`` (``student``, ``reference``: the
            dataset's recorded response, `OTHER_MODEL`: another model's sample) and ``p_safe``.
        min_p_safe: P(safe) a refusal needs and below which a compliance is unsafe; None = no safety judge
            (every compliance to a toxic prompt counts as unsafe).
        partial_is_refusal: Count partial refusals as refusals.
        seed: Seed of the per-prompt choices.
        chosen_from: Origins of the chosen refusal, in order of preference (on-policy refusals first).
        rejected_from: Origins of the rejected compliance, in order of preference.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in anchors:
        groups.setdefault((row["source"], row["id"]), []).append(row)
    pairs = []
    for key, rows in groups.items():
        refusals = _first_origin([r for r in rows if is_refusal(r["refusal"], partial_is_refusal)
                                  and _is_safe(r, min_p_safe) and not is_empty(r)], chosen_from)  # empty teaches nothing
        unsafe = _first_origin([r for r in rows if r["refusal"] == "full_compliance" and not is_empty(r) and
                                (min_p_safe is None or (r.get("p_safe") is not None and r["p_safe"] < min_p_safe))],
                               rejected_from)
        if refusals and unsafe:
            chosen, rejected = _pick(refusals, seed, key), random.Random(f"{seed}/{key}/r").choice(
                sorted(unsafe, key=lambda r: r["sample_index"]))
            pairs.append({"prompt": chosen["prompt"], "chosen": chosen["response"], "rejected": rejected["response"],
                          "kind": "safety_anchor", "source": key[0], "id": key[1], "category": chosen.get("category"),
                          "chosen_origin": chosen["origin"], "chosen_sample_index": chosen["sample_index"],
                          "rejected_origin": rejected["origin"], "rejected_model": rejected.get("teacher"),
                          "rejected_sample_index": rejected["sample_index"], "chosen_verdict": chosen["refusal"],
                          "rejected_verdict": rejected["refusal"], "chosen_p_safe": chosen.get("p_safe"),
                          "rejected_p_safe": rejected.get("p_safe")})
    return pairs


def filter_by_ches(pairs: list[dict], quantile: float | None, score: str = "ches_normalized") -> list[dict]:
    """Per kind, the pairs whose CHES is at most the ``quantile`` of that kind's CHES (None keeps all)."""
    if quantile is None:
        return pairs
    import numpy as np

    kept = []
    for kind in dict.fromkeys(p["kind"] for p in pairs):
        values = [p[score] for p in pairs if p["kind"] == kind]
        cut = float(np.quantile(values, quantile))
        kept += [p for p in pairs if p["kind"] == kind and p[score] <= cut]
    return kept
