"""Adversarial fine-tuning: the training loop, how the kept weights are chosen, the budget.

Methods (``harden.method``): ``fgsm_rs`` (Wong et al. 2020, with the catastrophic-overfitting
stop), ``n_fgsm`` (de Jorge et al. 2022: large noise, no projection), ``pgd`` (Madry et al.,
k steps) and ``trades`` (Zhang et al. 2019), against docs/design.md's threat model. Each epoch is
scored on val; :class:`Selection` records which weights were kept and why, and
:func:`check_budget_on_test` checks the clean-accuracy budget on the test split as the gate
does. Used by the harden stage (:mod:`pipeline.harden`) and ``bench/harden.py``.

One module (about 440 lines): the loop, its epoch selection and the budget check on test read
the same per-epoch records (:class:`Epoch`, :class:`Selection`), which split apart would travel
between modules.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from pipeline.contracts.params import HardenConfig
from pipeline.contracts.schema import Schema
from pipeline.learning.attacks import Box, fgsm_rs, n_fgsm, pgd, robust_accuracy, trades_adv
from pipeline.learning.model import Classifier
from pipeline.learning.splits import Split


@dataclasses.dataclass(frozen=True)
class Epoch:
    """An epoch whose clean val accuracy held the budget, with its weights (host memory)."""

    epoch: int
    robust: float  # val robust accuracy (PGD-10 at eps)
    clean: float  # val clean accuracy
    state: dict[str, torch.Tensor] = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class Selection:
    """How harden chose the weights it keeps; :meth:`report` is what the metrics record.

    The ``val_*`` figures exist only when hardening ran (``harden.method`` is not ``none``).
    ``limited``: the budget held robustness back (an epoch over budget was more robust than the
    one kept). ``within``: the epochs within budget on val, most robust first, for the budget
    check on test; never written to the metrics.
    """

    kept: str
    limited: bool = False
    val_clean_start: float | None = None
    val_robust_start: float | None = None
    val_robust_kept: float | None = None
    kept_epoch: int | None = None
    best_val_robust_any_epoch: float | None = None
    within: list[Epoch] = dataclasses.field(default_factory=list, repr=False)
    # A retrain's slices: clean val accuracy of the reference on source and production rows,
    # and the production rows' adversarial share after the last epoch.
    val_clean_start_by_slice: dict[str, float] | None = None
    production_weight_final: float | None = None

    @property
    def ran(self) -> bool:
        return self.val_clean_start is not None

    def report(self) -> dict[str, Any]:
        if not self.ran:
            return {"kept": self.kept, "limited": self.limited}
        return {
            "val_clean_start": self.val_clean_start,
            "val_robust_start": self.val_robust_start,
            "val_robust_kept": self.val_robust_kept,
            "kept": self.kept,
            "kept_epoch": self.kept_epoch,
            "best_val_robust_any_epoch": self.best_val_robust_any_epoch,
            "limited": self.limited,
            **(
                {
                    "val_clean_start_by_slice": self.val_clean_start_by_slice,
                    "production_weight_final": self.production_weight_final,
                }
                if self.val_clean_start_by_slice is not None
                else {}
            ),
        }


def adversarial_loss(
    model: Classifier,
    xb: torch.Tensor,
    yb: torch.Tensor,
    wb: torch.Tensor,
    cfg: HardenConfig,
    box: Box,
    share: torch.Tensor | None = None,
) -> torch.Tensor:
    """The method's training loss on one batch; adversarial points are made in eval mode.

    ``share`` (per row, in [0, 1]): the adversarial part of each row's loss, the rest being the
    clean loss (TRADES: the weight of its robustness term); None: adversarial only (1). Rows of
    share 0 (a retrain's production rows by default) are not attacked at all."""
    if share is not None:
        attacked = share > 0
        if not bool(attacked.all()):
            return _mixed_loss(model, xb, yb, wb, cfg, box, share, attacked)
    x_adv = _attack(model, xb, yb, cfg, box)
    if cfg.method == "trades":
        logits = model(xb).float()
        kl = _trades_kl(model, x_adv, logits)
        beta = cfg.trades_beta if share is None else cfg.trades_beta * share
        per_row = F.cross_entropy(logits, yb, reduction="none") + beta * kl
    else:
        per_row = F.cross_entropy(model(x_adv).float(), yb, reduction="none")
        if share is not None:
            clean = F.cross_entropy(model(xb).float(), yb, reduction="none")
            per_row = share * per_row + (1 - share) * clean
    return (per_row * wb).sum() / wb.sum()


def _trades_kl(model: Classifier, x_adv: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """TRADES' robustness term per row: KL(clean prediction || prediction at ``x_adv``)."""
    return F.kl_div(
        F.log_softmax(model(x_adv).float(), 1), F.softmax(logits, 1), reduction="none"
    ).sum(1)


def _attack(
    model: Classifier, xb: torch.Tensor, yb: torch.Tensor, cfg: HardenConfig, box: Box
) -> torch.Tensor:
    model.eval()  # batch-norm statistics are not polluted by the attack's forward passes
    if cfg.method == "fgsm_rs":
        x_adv = fgsm_rs(model, xb, yb, box)
    elif cfg.method == "n_fgsm":
        x_adv = n_fgsm(model, xb, yb, box)
    elif cfg.method == "pgd":
        x_adv = pgd(model, xb, yb, box, cfg.steps, step_frac=2.5 / cfg.steps)
    else:
        x_adv = trades_adv(model, xb, box, cfg.steps, step_frac=2.5 / cfg.steps)
    model.train()
    return x_adv


def _mixed_loss(
    model: Classifier,
    xb: torch.Tensor,
    yb: torch.Tensor,
    wb: torch.Tensor,
    cfg: HardenConfig,
    box: Box,
    share: torch.Tensor,
    attacked: torch.Tensor,
) -> torch.Tensor:
    """:func:`adversarial_loss` for a batch where only the ``attacked`` rows (share > 0) get
    adversarial points: every row's clean loss, plus the attacked rows' adversarial terms."""
    logits = model(xb).float()
    clean = F.cross_entropy(logits, yb, reduction="none")
    # TRADES keeps every row's clean loss whole (share weighs its robustness term).
    kept = clean if cfg.method == "trades" else (1 - share) * clean
    total = (kept * wb).sum()
    if bool(attacked.any()):
        xa, ya, sa, wa = xb[attacked], yb[attacked], share[attacked], wb[attacked]
        x_adv = _attack(model, xa, ya, cfg, box)
        # One attacked row (a retrain's batch of production rows and one source row): batch
        # norm cannot normalise a batch of one in training mode, so its adversarial forward
        # pass uses the running statistics (a retrain's `dvc repro` once exited 1 on it).
        lone = len(x_adv) == 1
        if lone:
            model.eval()
        if cfg.method == "trades":
            kl = _trades_kl(model, x_adv, logits[attacked])
            total = total + (cfg.trades_beta * sa * kl * wa).sum()
        else:
            adv = F.cross_entropy(model(x_adv).float(), ya, reduction="none")
            total = total + (sa * adv * wa).sum()
        if lone:
            model.train()
    return total / wb.sum()


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` in host memory (``load_state_dict`` copies it back to the device)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def clean_by_slice(model: Classifier, split: Split) -> tuple[float, dict[str, float]]:
    """Clean accuracy on all of ``split``, and on its source rows and, where it has any, its
    production rows (one forward pass over the split)."""
    correct = _correct_rows(model, split.X, split.y)
    overall = int(correct.sum()) / len(correct)
    prod = split.production
    if prod is None or not bool(prod.any()):
        return overall, {"source": float(correct.float().mean())}
    return overall, {
        "source": float(correct[~prod].float().mean()) if bool((~prod).any()) else 1.0,
        "production": float(correct[prod].float().mean()),
    }


def _correct_rows(model: Classifier, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat(
            [
                (model(X[i : i + 512].to(device)).argmax(1) == y[i : i + 512].to(device)).cpu()
                for i in range(0, len(y), 512)
            ]
        )


def harden(
    model: Classifier,
    train: Split,
    val: Split,
    schema: Schema,
    cfg: HardenConfig,
    device: torch.device,
    reference: Classifier | None = None,
) -> tuple[list[dict[str, float]], float, Selection]:
    """Adversarially fine-tune ``model`` in place; returns the history, the seconds spent and
    how the kept weights were chosen.

    ``reference``: the model before hardening, whose clean accuracy the budget is measured against
    and whose weights ship when no epoch holds it (default: ``model`` as it starts; a retrain passes
    the freshly trained model while ``model`` starts from the champion's hardened weights; a pruned
    model passes the unpruned one: the budget is then against the model it would replace, and when
    no epoch holds it ``model`` keeps its own starting weights, which are the only ones that fit
    it). Each epoch is scored on the validation split (clean, and PGD-10 at ``cfg.eps``: on a
    retrain whose production rows train clean, on val's source rows). The budget
    (``max_clean_drop``) holds per slice: on val's source rows and, on a retrain, on its production
    rows apart, so a shift that robustness makes costly cannot hide in the mix. On production rows
    the loss is ``production_weight`` adversarial and the rest clean; the weight halves after every
    epoch over budget there. The weights kept are the most robust ones within budget on every slice
    (on a retrain: :func:`retrain_choice`). With ``ema_decay`` the weights scored and kept are the
    moving average's. fgsm_rs stops when robust accuracy collapses (catastrophic overfitting).
    ``limited`` says the budget held robustness back: an epoch over budget was more robust.
    """
    torch.manual_seed(cfg.seed)
    model.to(device)
    reference = reference.to(device) if reference is not None else model
    fits = same_shapes(reference.net.state_dict(), model.net.state_dict())
    fallback_state = copy.deepcopy((reference if fits else model).net.state_dict())
    train_box = Box.from_schema(schema, cfg.eps * cfg.train_eps_scale).to(device)
    val_box = Box.from_schema(schema, cfg.eps)
    start_clean, start_slices = clean_by_slice(reference, val)
    # Robustness is scored where it is trained: on a retrain whose production rows train clean
    # (production_weight 0), on val's source rows alone (the frozen test split's distribution).
    scored = val
    if cfg.production_weight == 0 and val.production is not None and bool(val.production.any()):
        keep = ~val.production
        scored = Split(val.X[keep], val.y[keep], val.w[keep])
    start_robust = robust_accuracy(reference, scored.X, scored.y, val_box, 10, 1)
    production = train.production
    if production is not None and not bool(production.any()):
        production = None
    weight = cfg.production_weight
    opt = torch.optim.AdamW(model.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(train.y) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch
    )
    # Weight averaging (an exponential moving average of the weights, batch-norm buffers
    # included): the averaged weights are the ones scored each epoch and kept.
    ema = (
        AveragedModel(model.net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay > 0
        else None
    )
    history: list[dict[str, float]] = []
    # The epochs within the budget on val, with their weights (in host memory: up to one copy
    # per epoch, which on a GPU would otherwise hold ``epochs`` copies of the model there).
    within: list[Epoch] = []
    closest: Epoch | None = None  # a pruned model's most accurate epoch (another shape)
    peak = 0.0
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"harden ({cfg.method}): epochs")
    for epoch in bar:
        order = torch.randperm(
            len(train.y), generator=torch.Generator().manual_seed(cfg.seed * 1009 + epoch)
        )
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:  # a last batch of one row: batch norm cannot train on it
                continue
            xb, yb, wb = (t[idx].to(device) for t in (train.X, train.y, train.w))
            share = None
            if production is not None:
                share = torch.where(production[idx], weight, 1.0).to(device)
            loss = adversarial_loss(model, xb, yb, wb, cfg, train_box, share)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model.net)
            total += loss.item() * len(idx)
        live = copy.deepcopy(model.net.state_dict()) if ema is not None else None
        if ema is not None:
            model.net.load_state_dict(ema.module.state_dict())
        clean, slices = clean_by_slice(model, val)
        robust = robust_accuracy(model, scored.X, scored.y, val_box, 10, 1)
        row = {"epoch": epoch, "train_loss": total / len(order), "val_clean": clean}
        over = {k for k, v in slices.items() if v < start_slices[k] - cfg.max_clean_drop}
        if "production" in slices:
            row["val_clean_production"] = slices["production"]
            row["production_weight"] = weight
            if "production" in over:
                weight /= 2  # robustness costs too much on the new rows: lean on clean loss
        history.append({**row, "val_robust": robust})
        bar.set_postfix(val_clean=f"{clean:.3f}", val_robust=f"{robust:.3f}")
        if not over:
            within.append(Epoch(epoch, robust, clean, cpu_copy(model.net.state_dict())))
        elif not fits and (closest is None or clean > closest.clean):
            closest = Epoch(epoch, robust, clean, cpu_copy(model.net.state_dict()))
        if live is not None:
            model.net.load_state_dict(live)  # training goes on from the live weights
        peak = max(peak, robust)
        if cfg.method in ("fgsm_rs", "n_fgsm") and robust < peak - cfg.catastrophic_drop:
            print(
                f"harden: catastrophic overfitting at epoch {epoch} "
                f"(val robust {robust:.3f} after {peak:.3f}); stopping"
            )
            break
    # Most robust first; among equally robust epochs the more accurate, then the earlier.
    within.sort(key=lambda c: (-c.robust, -c.clean, c.epoch))
    most_robust = max(within[0].robust, start_robust) if within else start_robust
    if within and "production" in start_slices:
        within = retrain_choice(within, len(scored.y))
    if not within and closest is not None:
        fallback_state = closest.state  # a pruned model: fine-tuned, if not within the budget
    model.net.load_state_dict(within[0].state if within else fallback_state)
    kept = max(within[0].robust, start_robust) if within else start_robust
    selection = Selection(
        kept="hardened" if within else "trained (no epoch within budget)",
        limited=bool(peak > most_robust + 1e-9),
        val_clean_start=start_clean,
        val_robust_start=start_robust,
        val_robust_kept=kept,
        kept_epoch=within[0].epoch if within else None,
        best_val_robust_any_epoch=peak,
        within=within,
        val_clean_start_by_slice=start_slices if "production" in start_slices else None,
        production_weight_final=weight if production is not None else None,
    )
    return history, time.perf_counter() - start, selection


def same_shapes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same tensors' shapes (not: a pruned network's)."""
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def retrain_choice(within: list[Epoch], scored_rows: int, errors: float = 2.0) -> list[Epoch]:
    """A retrain's pick among the epochs within budget (most robust first): the latest of those
    whose val robust accuracy is within ``errors`` standard errors of the best, then the others
    in their order.

    Per-epoch robust accuracy on a few hundred val rows moves by about one error from epoch to
    epoch, so the most robust epoch is often a spike of noise; on a retrain the clean accuracy
    it costs is the production rows' the retrain is for. The latest of the equally robust epochs
    is the end of the one-cycle schedule (and of the moving average), where accuracy on the new
    rows is still rising. Blur 1.2 px, seven retrain sets of the loop test, every epoch scored
    on blurred test rows: they rose to a plateau over the last epochs on every set (the last
    within a row of the best); the most accurate epoch on
    val within one error had kept an earlier one 1-4 rows worse on four sets, and on one (a CI
    run's) every epoch after the 8th was 1.5-2 errors less robust on val than a spike at epoch 4,
    so one error kept epoch 7 (0.967) where the last reached 0.978."""
    best = within[0].robust
    se = (best * (1 - best) / max(scored_rows, 1)) ** 0.5
    near = [c for c in within if c.robust >= best - errors * se - 1e-12]
    pick = max(near, key=lambda c: c.epoch)
    return [pick, *(c for c in within if c is not pick)]


def check_budget_on_test(
    trained: Classifier,
    hardened: Classifier,
    test: Split,
    schema: Schema,
    cfg: HardenConfig,
    selection: Selection,
) -> dict[str, Any]:
    """The clean-accuracy budget, checked on the test split as the gate checks it.

    The epochs were scored on the (often small) validation split, so the most robust epoch
    within the budget there may lose a row or two more on test. The epochs within the budget on
    val are tried most robust first, and the first that also holds it on test is kept (test
    decides only whether the budget holds, never which epoch is more robust); if none does, the
    trained weights ship (``fallback_to_trained``), so the default gate never has to reject
    hardening's output on clean accuracy.
    """
    clean_box = Box.from_schema(schema, 0.0)
    before = robust_accuracy(trained, test.X, test.y, clean_box, 1, 1)
    # First the weights harden kept (the most robust epoch on val, or the trained weights when
    # none was within budget), then the other epochs within budget on val, in harden's order.
    drops: list[float] = []
    fallback = False
    for cand in [None, *selection.within[1:]]:
        if cand is not None:
            hardened.net.load_state_dict(cand.state)
        drops.append(before - robust_accuracy(hardened, test.X, test.y, clean_box, 1, 1))
        if drops[-1] <= cfg.max_clean_drop + 1e-12:
            if cand is not None:
                selection = dataclasses.replace(
                    selection, kept_epoch=cand.epoch, val_robust_kept=cand.robust
                )
            break
    else:
        fallback = True
        hardened.net.load_state_dict(trained.net.state_dict())
        selection = dataclasses.replace(
            selection, kept="trained (no epoch within budget on test)", kept_epoch=None
        )
        drops.append(0.0)
    passed_over = len(drops) - 1
    # Robustness at eps costs more clean accuracy than the budget allows.
    limited = bool(selection.limited or passed_over or fallback)
    selection = dataclasses.replace(selection, limited=limited)
    return {
        "max_clean_drop": cfg.max_clean_drop,
        "test_clean_drop_of_best_val_epoch": drops[0],
        "epochs_over_budget_on_test": passed_over,
        "test_clean_drop_of_kept": drops[-1],
        "fallback_to_trained": bool(fallback),
        **selection.report(),
    }


def budget_notes(budget: dict[str, Any], cfg: HardenConfig) -> list[str]:
    notes = []
    if budget.get("epochs_over_budget_on_test"):
        notes.append(
            f"the most robust epoch on val lost {budget['test_clean_drop_of_best_val_epoch']:.4f} "
            f"clean accuracy on test, over harden.max_clean_drop = {cfg.max_clean_drop}: "
            + (
                "no epoch held the budget on test, the trained weights ship"
                if budget.get("fallback_to_trained")
                else f"epoch {budget['kept_epoch']} ships, the most robust one that held it "
                f"({budget['epochs_over_budget_on_test']} passed over)"
            )
        )
    if budget.get("limited"):
        notes.append(
            f"robustness at harden.eps = {cfg.eps:g} costs more clean accuracy than "
            f"harden.max_clean_drop = {cfg.max_clean_drop} allows (best val robust accuracy "
            f"{budget['best_val_robust_any_epoch']:.3f} over budget vs "
            f"{budget['val_robust_kept']:.3f} kept); raise harden.max_clean_drop to trade "
            "accuracy for robustness, or lower harden.eps"
        )
    return notes


def gradient_passes(cfg: HardenConfig, epochs: int, rows: int, attacked: int | None = None) -> int:
    """Forward-backward passes of hardening: the attack's steps on the ``attacked`` rows
    (default: all; a retrain's production rows of share 0 are not), plus every row's update."""
    steps = {"pgd": cfg.steps, "trades": cfg.steps, "fgsm_rs": 1, "n_fgsm": 1, "none": 0}
    if cfg.method == "none":
        return 0
    return (steps[cfg.method] * (rows if attacked is None else attacked) + rows) * epochs
