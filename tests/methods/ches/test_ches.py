"""CHES on the real embedded model, against a direct per-sequence computation."""

import torch

from porover.methods.ches.scores import ches_scores, encode_pair_side


def direct_ches(model, tokenizer, prompt, chosen, rejected):
    """One unbatched forward per response; sum by hand the final hidden states predicting each response token."""
    sums, lengths = [], []
    for response in (chosen, rejected):
        ids, prompt_len = encode_pair_side(tokenizer, prompt, response)
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].double()
        # response token t (t >= prompt_len) is predicted by the state at t - 1
        sums.append(sum(hidden[t - 1] for t in range(prompt_len, len(ids))))
        lengths.append(len(ids) - prompt_len)
    (plus, minus), (n_plus, n_minus) = sums, lengths
    return (float(plus @ minus - plus @ plus),
            float((plus / n_plus) @ (minus / n_minus) - (plus / n_plus) @ (plus / n_plus)), n_plus, n_minus)


def test_batched_ches_matches_a_direct_computation(tiny_model):
    model, tokenizer = tiny_model
    pairs = [("How do I kill a Python process?", "Use `kill <pid>` or `pkill python`.",
              "I'm sorry, but I can't help with killing."),
             ("Where can I shoot a good photo?", "At golden hour, in a park with soft light and a clear background.",
              "Sorry, I cannot help with that.")]
    scores = ches_scores(model, tokenizer, *zip(*pairs), batch_size=4)  # one padded batch of 4 sequences
    for (prompt, chosen, rejected), score in zip(pairs, scores):
        ches, normalized, n_plus, n_minus = direct_ches(model, tokenizer, prompt, chosen, rejected)
        assert (score["chosen_tokens"], score["rejected_tokens"]) == (n_plus, n_minus)
        assert abs(score["ches"] - ches) <= 1e-4 * abs(ches)
        assert abs(score["ches_normalized"] - normalized) <= 1e-4 * abs(normalized)
    # identical responses: <h, h> - ||h||^2 = 0
    same = ches_scores(model, tokenizer, ["Hi"], ["Hello there."], ["Hello there."])[0]
    assert abs(same["ches"]) < 1e-6 * same["chosen_tokens"] ** 2 and abs(same["ches_normalized"]) < 1e-6
