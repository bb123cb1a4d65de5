import math

import pytest
import torch

from tsembed.health import mean_pairwise_cosine as _mean_pairwise_cosine
from tsembed.training.collapse import CollapseWatch
from tsembed.training.eans import EANSConfig
from tsembed.training.objective import ContrastiveObjective, LossConfig


def test_mean_pairwise_cosine_matches_the_pair_loop():
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    unit = torch.nn.functional.normalize(x, dim=-1)
    pairs = [float(unit[i] @ unit[j]) for i in range(7) for j in range(7) if i != j]
    assert _mean_pairwise_cosine(x) == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    assert _mean_pairwise_cosine(torch.ones(4, 3) * 2.5) == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(_mean_pairwise_cosine(torch.ones(1, 3)))


def test_collapsed_queries_tie_every_score_so_the_loss_is_log_m_and_is_flagged():
    q = torch.nn.functional.normalize(torch.ones(4, 3), dim=-1)  # every query the same point
    t = torch.nn.functional.normalize(torch.tensor([[1.0, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]]), dim=-1)
    objective = ContrastiveObjective(LossConfig(tau=0.05), EANSConfig(mode="off"))
    out = objective(q, t, None, None, torch.arange(4) + 10 * torch.arange(4), torch.full((4,), -1), False)
    assert float(out.loss) == pytest.approx(math.log(4), abs=1e-5)
    assert out.logs["query_cosine"] == pytest.approx(1.0, abs=1e-6) and out.logs["num_targets"] == 4


def test_collapse_watch_warns_once_after_a_streak(caplog):
    watch = CollapseWatch(threshold=0.99, patience=3)
    fired = [watch.update("A", c, 4.16, 64, step) for step, c in enumerate([0.999, 0.999, 0.5, 0.999, 0.999, 0.999,
                                                                          0.999, 0.999])]
    assert fired == [False, False, False, False, False, True, False, False]  # the streak restarts after 0.5
    assert "dataset A" in caplog.text and "log(64 targets)" in caplog.text
    assert not watch.update("mixed", 1.0, 4.16, 64, 9) and not watch.update("B", None, 4.16, 64, 9)


def test_collapse_watch_names_what_it_flagged_and_survives_a_checkpoint():
    watch = CollapseWatch(threshold=0.99, patience=2)
    for step in range(3):
        watch.update("B", 0.999, 4.16, 64, step)
        watch.update("A", 0.2, 1.0, 64, step)
    assert watch.flagged == ["B"]
    resumed = CollapseWatch(threshold=0.99, patience=2)
    resumed.load_state_dict(watch.state_dict())
    assert resumed.flagged == ["B"] and resumed.streaks == {"B": 3, "A": 0}
    assert not resumed.update("B", 1.0, 4.16, 64, 4)  # warned once per run, resumes included


def test_when_every_image_embedding_is_the_same_only_text_queries_keep_a_gradient():
    """Why a collapsed image path never recovers (issue 22, the rank-80 LoRA): with every image embedding equal,
    an image-query batch has exactly zero gradient before the L2 normalisation (its raw gradient points along the
    one embedding, which the normalisation projects out), so nothing upstream moves. A text-query batch against
    those identical image targets still has a gradient at the targets; a loss stuck at log M with a zero
    gradient there too means the gradient dies inside the image path itself (e.g. a projector whose output no
    longer depends on its input), not in the loss."""
    from tsembed.training.losses import info_nce

    n, m, d = 4, 8, 6
    torch.manual_seed(0)
    image = torch.randn(d)

    def grads(query_raw):
        target_raw = image.repeat(m, 1).requires_grad_(True)
        q = torch.nn.functional.normalize(query_raw, dim=-1)
        t = torch.nn.functional.normalize(target_raw, dim=-1)
        loss = info_nce(q @ t.T, torch.arange(n), 0.05)
        loss.backward()
        return float(loss.detach()), query_raw.grad, target_raw.grad

    loss, gq, gt = grads(image.repeat(n, 1).requires_grad_(True))  # image queries: the same point
    assert loss == pytest.approx(math.log(m), abs=1e-5)
    assert gq.abs().max() < 1e-6 and gt.abs().max() < 1e-6
    torch.manual_seed(1)
    loss, gq, gt = grads(torch.randn(n, d).requires_grad_(True))  # text queries: spread
    assert loss == pytest.approx(math.log(m), abs=1e-5) and gt.abs().max() > 1e-2
