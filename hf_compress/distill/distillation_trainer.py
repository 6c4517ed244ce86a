"""``DistillationTrainer``: knowledge distillation on top of TRL's ``SFTTrainer``.

One trainer for causal-LM and sequence-classifier students:

* logit distillation (forward/reverse KL, JSD(beta), skew KL, TVD; temperature, T^2) mixed with the
  hard-label CE, computed from hidden states and LM-head weights in token chunks
  (:mod:`.chunked`) so ``[B, T, V]`` logits of both models are never held;
* feature distillation: hidden-state MSE/cosine through learned projections, attention maps;
* contrastive (InfoNCE, in-batch negatives) on pooled representations;
* top-k distillation, online or from an offline teacher cache (:mod:`.teacher_cache`);
* GKD's on-policy fraction ``lmbda``.

Losses are sums over valid tokens divided by the global token count of the optimizer step
(``num_items_in_batch``), so gradient accumulation and data parallelism leave them unchanged.

Not to be confused with ``trl.DistillationTrainer`` (TRL >= 1.10), which is on-policy only and
shares no code with this one.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DataCollatorWithPadding
from trl import SFTTrainer

from ..models.table import decoder_layers
from .chunked import Objective, TeacherTopK, chunked_distill_loss
from .classification import is_classifier, prepare_classification_dataset
from .distillation_config import DistillationConfig
from .features import Captured, Projections, capture, hidden_width, resolve_layer_map
from .forward import backbone_hidden, model_inputs, redirect
from .heads import (
    check_same_tokenizer,
    compared_vocab,
    lm_head,
    load_teacher_tokenizer,
    unwrap_peft,
)
from .losses import logit_kd_loss
from .on_policy import build_on_policy_batch, on_policy_decision, prompts_of
from .teacher_cache import CACHE_COLUMNS, IDS, LOGPROBS, TAIL, TeacherCacheCollator, is_teacher_cache
from .teacher_placement import place_teacher
from .terms import contrastive_term, feature_terms
from .zero3 import gathered, head_parameters, register_external

logger = logging.getLogger(__name__)

PROJECTIONS_NAME = "distill_projections"
PROJECTIONS_FILE = "distill_projections.safetensors"


@dataclass
class _TeacherOut:
    """Teacher states of one batch (no grad): final hidden ``[B, T, H]`` or classifier logits ``[B, C]``."""

    hidden: torch.Tensor | None
    logits: torch.Tensor | None
    captured: Captured


class DistillationTrainer(SFTTrainer):
    """Distil ``teacher_model`` into ``model`` (a causal LM or a sequence classifier).

    Args:
        model: the student (model instance or path; a classifier must be an instance).
        teacher_model: the teacher (instance or path), or ``None`` when ``train_dataset`` is a
            teacher cache from :func:`~hf_compress.distill.teacher_cache.cache_teacher_topk`.
        args: a :class:`DistillationConfig`.
        teacher_processing_class: the teacher's tokenizer, compared with the student's; when
            omitted it is loaded from the teacher's local folder if possible.
        Other arguments are those of ``trl.SFTTrainer``.
    """

    _tag_names = ["trl", "sft", "hf-compress", "distillation"]
    _name = "hf-compress distillation"
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: nn.Module | str,
        teacher_model: nn.Module | str | None = None,
        args: DistillationConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        teacher_processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        formatting_func=None,
    ) -> None:
        args = args if args is not None else DistillationConfig(output_dir="distill-output")
        if not isinstance(args, DistillationConfig):
            raise TypeError(f"args must be a DistillationConfig, got {type(args).__name__}")
        self._classifier = is_classifier(model)
        self._offline = is_teacher_cache(train_dataset)
        self._check_modes(args, teacher_model)
        if self._classifier:
            args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
            max_len = min(args.max_length or 512, getattr(processing_class, "model_max_length", 512))
            train_dataset = prepare_classification_dataset(
                train_dataset, processing_class, args.dataset_text_field, max_len
            )
            eval_dataset = prepare_classification_dataset(
                eval_dataset, processing_class, args.dataset_text_field, max_len
            )
            data_collator = data_collator or DataCollatorWithPadding(processing_class)
        if self._offline:
            args.top_k = self._cache_k(train_dataset, args.top_k)
        super().__init__(
            model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
            formatting_func=formatting_func,
        )
        if args.attention_weight > 0:
            unwrap_peft(self.model).set_attn_implementation("eager")
        self.teacher_model = None if self._offline else self._prepare_teacher(teacher_model)
        self._check_pair(teacher_processing_class)
        self._setup_features()
        # Trainer counts `num_items_in_batch` only for models taking loss kwargs; we always need it.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = not self._classifier
        if self._offline:
            self.data_collator = TeacherCacheCollator(self.data_collator, args.temperature, self._vocab)
        self._objective = Objective(
            args.loss, args.temperature, args.beta, args.skew_alpha, args.alpha, args.kd_weight, args.top_k
        )
        self._student_head_registered = False

    # ------------------------------------------------------------------ setup
    def _check_modes(self, args: DistillationConfig, teacher_model) -> None:
        if teacher_model is None and not self._offline:
            raise ValueError(
                "teacher_model is required unless train_dataset is a teacher cache (cache_teacher_topk)"
            )
        if self._classifier and (self._offline or args.top_k or args.lmbda):
            raise ValueError(
                "classifier students support neither top_k/teacher caches nor on-policy lmbda > 0"
            )
        if self._offline and (
            args.lmbda or args.feature_weight or args.attention_weight or args.contrastive_weight
        ):
            raise ValueError(
                "an offline teacher cache holds only top-k logits: lmbda, feature_weight, attention_weight and "
                "contrastive_weight must be 0"
            )
        if self._offline and (args.packing or args.padding_free or args.truncation_mode != "keep_start"):
            raise ValueError(
                "an offline teacher cache needs packing=False, padding_free=False, truncation_mode='keep_start'"
            )

    @staticmethod
    def _cache_k(dataset, top_k: int | None) -> int:
        k = len(dataset[0][IDS][0])
        if top_k is not None and top_k != k:
            raise ValueError(f"DistillationConfig.top_k={top_k} but the teacher cache holds top-{k}")
        return k

    def _prepare_teacher(self, teacher: nn.Module | str) -> nn.Module:
        """Load, cast, freeze and place the teacher (:mod:`.teacher_placement`); never DDP-wrapped."""
        args = self.args
        if isinstance(teacher, str):
            teacher = self._load_teacher(teacher)
        if args.teacher_dtype not in (None, "auto"):
            teacher = teacher.to(getattr(torch, args.teacher_dtype))
        if args.attention_weight > 0:
            teacher.set_attn_implementation("eager")
        teacher.eval()
        teacher.requires_grad_(False)
        return place_teacher(teacher, self.accelerator, args.teacher_device)

    def _load_teacher(self, path: str) -> nn.Module:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        kwargs = self.args.teacher_model_init_kwargs or {}
        kwargs = json.loads(kwargs) if isinstance(kwargs, str) else dict(kwargs)
        auto = AutoModelForSequenceClassification if self._classifier else AutoModelForCausalLM
        return auto.from_pretrained(path, **kwargs)

    @property
    def _teacher_inner(self) -> nn.Module | None:
        return None if self.teacher_model is None else self.accelerator.unwrap_model(self.teacher_model)

    def _check_pair(self, teacher_tokenizer) -> None:
        """Refuse different tokenizers / label sets before training; fix the compared vocabulary."""
        teacher = self._teacher_inner
        student = unwrap_peft(self.model)
        if teacher is not None:
            teacher_tokenizer = teacher_tokenizer or load_teacher_tokenizer(teacher)
            if teacher_tokenizer is not None:
                check_same_tokenizer(self._tokenizer, teacher_tokenizer)
            else:
                logger.warning(
                    "could not load the teacher's tokenizer; pass teacher_processing_class to verify it"
                )
        if self._classifier:
            s_labels, t_labels = student.config.num_labels, teacher.config.num_labels
            if s_labels != t_labels:
                raise ValueError(f"student has {s_labels} labels but the teacher has {t_labels}")
            self._vocab = None
        else:
            self._vocab = compared_vocab(student, teacher, self._tokenizer)

    def _setup_features(self) -> None:
        """Layer map, hooked blocks and width projections for the feature/attention/contrastive terms."""
        args, student, teacher = self.args, unwrap_peft(self.model), self._teacher_inner
        self._layer_map: list[tuple[int, int]] = []
        if args.feature_weight > 0 or args.attention_weight > 0:
            n_s, n_t = len(decoder_layers(student)), len(decoder_layers(teacher))
            self._layer_map = resolve_layer_map(args.feature_layers, n_s, n_t)
        self._projections = None
        if args.feature_weight > 0 or args.contrastive_weight > 0:
            blocks = [s for s, _ in self._layer_map] if args.feature_weight > 0 else []
            proj = Projections(
                hidden_width(student), hidden_width(teacher), blocks, args.contrastive_weight > 0
            )
            param = next(student.parameters())
            self._projections = proj.to(device=param.device, dtype=param.dtype)
        self._attach_projections()

    # ------------------------------------------------------------ projections
    def _attach_projections(self) -> None:
        if self._projections is not None and self._projections.has_parameters:
            unwrap_peft(self.accelerator.unwrap_model(self.model)).add_module(
                PROJECTIONS_NAME, self._projections
            )

    def _detach_projections(self) -> None:
        unwrap_peft(self.accelerator.unwrap_model(self.model))._modules.pop(PROJECTIONS_NAME, None)

    def train(self, *args: Any, **kwargs: Any):
        """``Trainer.train``; projections ride on the student during training and are detached after."""
        self._attach_projections()
        try:
            return super().train(*args, **kwargs)
        finally:
            self._detach_projections()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the student without the projections; write them beside it when asked (or in checkpoints)."""
        output_dir = output_dir or self.args.output_dir
        attached = PROJECTIONS_NAME in unwrap_peft(self.accelerator.unwrap_model(self.model))._modules
        self._detach_projections()
        if state_dict is not None:
            state_dict = {k: v for k, v in state_dict.items() if f"{PROJECTIONS_NAME}." not in k}
        try:
            super()._save(output_dir, state_dict=state_dict)
        finally:
            if attached:
                self._attach_projections()
        keep = self.args.save_projections or getattr(self, "_saving_checkpoint", False)
        if (
            keep
            and self.args.should_save
            and self._projections is not None
            and self._projections.has_parameters
        ):
            from safetensors.torch import save_file

            tensors = {k: v.detach().contiguous().cpu() for k, v in self._projections.state_dict().items()}
            save_file(tensors, str(Path(output_dir) / PROJECTIONS_FILE))

    def _save_checkpoint(self, model, trial) -> None:
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / PROJECTIONS_FILE
        if self._projections is not None and path.is_file():
            from safetensors.torch import load_file

            self._projections.load_state_dict(load_file(str(path)))

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        extra = ["attention_mask", "token_type_ids", "position_ids", *CACHE_COLUMNS]
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *extra]))

    # --------------------------------------------------------------- training
    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """The micro-batches of one optimizer step, with the on-policy ones (``lmbda``) generated first.

        Swapping before ``num_items_in_batch`` is counted keeps the loss divisor the global token count
        of the batches actually trained on. The choice of micro-batch ``i`` depends only on
        ``(seed, global step, i)``, so every rank generates for the same micro-batches.
        """
        if self.args.lmbda <= 0:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        batches = list(itertools.islice(epoch_iterator, num_batches))
        step = self.state.global_step
        for i, batch in enumerate(batches):
            if on_policy_decision(self.args.seed, step, i, self.args.lmbda):
                batches[i] = self._on_policy_inputs(self.model_wrapped, self._prepare_inputs(batch))
        return batches, self._get_num_items_in_batch(batches, device)

    def _on_policy_inputs(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        from trl.models import unwrap_model_for_generation

        pad = self._tokenizer.pad_token_id
        eos = unwrap_peft(self.accelerator.unwrap_model(model)).generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        prompt_ids, prompt_mask = prompts_of(inputs, pad)
        gen_kwargs = {
            "do_sample": True,
            "temperature": self.args.generation_temperature,
            "top_k": 0,
            "top_p": 1.0,
            "max_new_tokens": self.args.max_new_tokens,
            "pad_token_id": pad,
        }
        with unwrap_model_for_generation(
            model, self.accelerator, gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs
        ) as unwrapped:
            generated = unwrapped.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **gen_kwargs)
        return build_on_policy_batch(inputs, generated, prompt_ids.shape[1], pad, eos_ids)

    def _normaliser(self, n_local: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """Divisor of the summed losses: the global count, or the local one outside training steps."""
        if num_items_in_batch is None:
            return n_local.clamp(min=1).float()
        return torch.as_tensor(num_items_in_batch, device=n_local.device).float().clamp(min=1)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Total distillation loss of one micro-batch (see :class:`DistillationConfig`)."""
        loss, logits = self._distill_loss(model, inputs, num_items_in_batch)
        if self._divisor_is_global(num_items_in_batch):
            # DDP averages gradients over ranks while the divisor already counts every rank's tokens.
            loss = loss * self.accelerator.num_processes
        return (loss, {"logits": logits}) if return_outputs else loss

    def _divisor_is_global(self, num_items_in_batch) -> bool:
        """Whether the loss divisor counts the tokens of every rank (then the loss is scaled by the ranks)."""
        return bool(self.args.average_tokens_across_devices) and num_items_in_batch is not None

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the distillation loss, plus the student's logits for classifiers."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, logits = self._distill_loss(model, inputs, None)
        if prediction_loss_only or logits is None:
            return loss.detach(), None, None
        return loss.detach(), logits.detach(), inputs.get("labels")

    def _distill_loss(self, model, inputs, num_items_in_batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        teacher = None if self._offline else self._teacher_pass(inputs)
        if self._classifier:
            return self._classifier_loss(model, inputs, teacher, num_items_in_batch)
        inner = self.accelerator.unwrap_model(model)
        if not self._student_head_registered:  # ZeRO-3: gather the head for the whole redirected forward
            register_external(inner, head_parameters(inner))
            self._student_head_registered = True
        mask = inputs["labels"][:, 1:] != -100
        count = self._normaliser(mask.sum(), num_items_in_batch)
        loss = redirect(
            model, inner, self._student_lm_loss, inner, inputs, mask, teacher, count, num_items_in_batch
        )
        self._count_tokens(inputs)
        return loss, None

    # ---------------------------------------------------------------- teacher
    @torch.no_grad()
    def _teacher_pass(self, inputs: dict[str, Any]) -> _TeacherOut:
        """Teacher final hidden states (causal LM) or logits (classifier), plus hooked block states."""
        wrapper, inner = self.teacher_model, self._teacher_inner
        hf = unwrap_peft(inner)
        hf.eval()
        device = next(hf.parameters()).device
        t_inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in model_inputs(inputs).items()}
        t_hidden = [t for _, t in self._layer_map] if self.args.feature_weight > 0 else []
        t_attn = [t for _, t in self._layer_map] if self.args.attention_weight > 0 else []

        def run() -> _TeacherOut:
            with capture(hf, t_hidden, t_attn) as got:
                if self._classifier:
                    out = hf(**t_inputs, output_hidden_states=self.args.contrastive_weight > 0)
                    last = out.hidden_states[-1] if self.args.contrastive_weight > 0 else None
                    return _TeacherOut(last, out.logits, got)
                return _TeacherOut(backbone_hidden(hf, t_inputs), None, got)

        return redirect(wrapper, inner, run)

    def _teacher_side(self, inputs, mask: torch.Tensor, teacher: _TeacherOut | None):
        """What the chunked loss compares against: teacher hidden + head, or the cached top-k."""
        if teacher is None:
            return TeacherTopK(
                inputs[IDS][:, :-1][mask], inputs[LOGPROBS][:, :-1][mask], inputs[TAIL][:, :-1][mask]
            )
        return teacher.hidden[:, :-1][mask.to(teacher.hidden.device)], lm_head(self._teacher_inner)

    # ------------------------------------------------------------ causal LM
    def _student_lm_loss(self, inner, inputs, mask, teacher: _TeacherOut | None, count, num_items_in_batch):
        """Runs inside the student wrapper's forward: backbone, chunked logit loss, feature terms."""
        args, hf = self.args, unwrap_peft(inner)
        s_hidden = [s for s, _ in self._layer_map] if args.feature_weight > 0 else []
        s_attn = [s for s, _ in self._layer_map] if args.attention_weight > 0 else []
        with capture(hf, s_hidden, s_attn) as got:
            hidden = backbone_hidden(hf, model_inputs(inputs))
        targets = inputs["labels"][:, 1:][mask]
        with gathered(head_parameters(None if teacher is None else self._teacher_inner)):
            loss, stats = chunked_distill_loss(
                hidden[:, :-1][mask],
                lm_head(hf),
                self._teacher_side(inputs, mask, teacher),
                targets,
                self._vocab,
                self._objective,
                args.kd_chunk_size,
            )
        total = loss / count
        n = mask.sum().clamp(min=1)
        logs = {"kd_loss": stats[1] / n, "ce_loss": stats[2] / n}
        if args.alpha > 0:
            logs["mean_token_accuracy"] = stats[3] / n

        def rows(x: torch.Tensor) -> torch.Tensor:  # [B, T, ...] -> [N, ...] at the trained positions
            return x[:, :-1][mask.to(x.device)].to(hidden.device)

        weights = torch.ones(int(mask.sum()), device=hidden.device)
        total = total + self._features(got, teacher, rows, weights, count, logs)
        if args.contrastive_weight > 0:
            total = total + self._contrastive(
                hidden, teacher.hidden, inputs.get("attention_mask"), num_items_in_batch, logs
            )
        self._log(logs)
        return total

    # ------------------------------------------------------------ classifier
    def _classifier_loss(
        self, model, inputs, teacher: _TeacherOut, num_items_in_batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example logit KD + CE for sequence classifiers, plus feature terms; and the ``[B, labels]`` logits."""
        args, hf = self.args, unwrap_peft(self.accelerator.unwrap_model(model))
        s_hidden = [s for s, _ in self._layer_map] if args.feature_weight > 0 else []
        s_attn = [s for s, _ in self._layer_map] if args.attention_weight > 0 else []
        with capture(hf, s_hidden, s_attn) as got:
            out = model(**model_inputs(inputs), output_hidden_states=args.contrastive_weight > 0)
        logits, labels = out.logits, inputs.get("labels")
        n_local = (
            torch.tensor(logits.shape[0], device=logits.device) if labels is None else (labels != -100).sum()
        )
        count = self._normaliser(n_local, num_items_in_batch)
        t_logits = teacher.logits.to(logits.device)
        kd = logit_kd_loss(logits, t_logits, args.loss, args.temperature, args.beta, args.skew_alpha).sum()
        ce = (
            F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")
            if labels is not None
            else kd * 0
        )
        total = (args.kd_weight * kd + args.alpha * ce) / count
        n = n_local.clamp(min=1)
        logs = {"kd_loss": kd.detach() / logits.shape[0], "ce_loss": ce.detach() / n}
        if labels is not None:
            logs["label_accuracy"] = (logits.argmax(-1) == labels).float().sum() / n
        mask = inputs.get("attention_mask")
        mask = torch.ones(inputs["input_ids"].shape, device=logits.device) if mask is None else mask
        weights = (1.0 / mask.sum(1).clamp(min=1)).unsqueeze(1).expand_as(mask)[mask.bool()].float()

        def rows(x: torch.Tensor) -> torch.Tensor:  # every real token; each example weighs 1 in total
            return x[mask.bool().to(x.device)].to(logits.device)

        total = total + self._features(got, teacher, rows, weights, count, logs)
        if args.contrastive_weight > 0:
            total = total + self._contrastive(
                out.hidden_states[-1], teacher.hidden, mask, num_items_in_batch, logs
            )
        self._log(logs)
        return total, logits

    def _features(
        self, got: Captured, teacher: _TeacherOut | None, rows, weights, count, logs
    ) -> torch.Tensor:
        if teacher is None:
            return weights.new_zeros(())
        return feature_terms(
            self.args, self._layer_map, self._projections, got, teacher.captured, rows, weights, count, logs
        )

    def _contrastive(self, s_last, t_last, attention_mask, num_items_in_batch, logs) -> torch.Tensor:
        """InfoNCE (a per-micro-batch mean), divided so that it is not multiplied by the ranks in compute_loss."""
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        if self._divisor_is_global(num_items_in_batch):
            steps *= self.accelerator.num_processes
        return contrastive_term(self.args, self._projections, s_last, t_last, attention_mask, steps, logs)

    # ----------------------------------------------------------------- logs
    def _log(self, logs: dict[str, torch.Tensor]) -> None:
        mode = "train" if self.model.training else "eval"
        for key, value in logs.items():
            self._metrics[mode][key].append(float(value))

    def _count_tokens(self, inputs: dict[str, Any]) -> None:
        if self.model.training and "attention_mask" in inputs:
            n = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += n
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
