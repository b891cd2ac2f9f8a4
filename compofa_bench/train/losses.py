"""Losses as OFA/CompOFA define them.

``loss = CE_label_smoothed(output, labels) + kd_ratio * CE(output, softmax(teacher_logits))``,
where the soft-target cross-entropy is ``mean(sum(-p * log_softmax(output)))`` (OFA's
``cross_entropy_loss_with_soft_target``) and label smoothing mixes the one-hot target with the
uniform distribution: ``(1 - s) * onehot + s / n_classes``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smooth_labels(labels: torch.Tensor, n_classes: int, smoothing: float) -> torch.Tensor:
    onehot = torch.zeros(labels.shape[0], n_classes, device=labels.device)
    onehot.scatter_(1, labels.unsqueeze(1), 1.0)
    return onehot * (1.0 - smoothing) + smoothing / n_classes


def soft_target_ce(logits: torch.Tensor, soft_target: torch.Tensor) -> torch.Tensor:
    return torch.mean(torch.sum(-soft_target * F.log_softmax(logits.float(), dim=1), dim=1))


def label_smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    return soft_target_ce(logits, smooth_labels(labels, logits.shape[1], smoothing))


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    smoothing: float,
    teacher_logits: torch.Tensor | None = None,
    kd_ratio: float = 0.0,
) -> torch.Tensor:
    """Label-smoothed CE plus ``kd_ratio`` times CE against the teacher's softmax.

    The teacher's logits are detached here, whatever the caller passes: soft targets never
    carry gradient into the network that produced them (in-place distillation relies on this).
    """
    loss = label_smoothed_ce(logits, labels, smoothing)
    if teacher_logits is not None and kd_ratio > 0:
        soft = F.softmax(teacher_logits.detach().float(), dim=1)
        loss = loss + kd_ratio * soft_target_ce(logits, soft)
    return loss
