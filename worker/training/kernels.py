"""Fused building blocks for the training step: the same maths as the plain modules, less memory
traffic.

A LoRA projection in peft is five separate operations, each writing a fresh activation-sized
tensor: ``base(x)``, ``A(x)``, ``B(.)``, ``* scaling``, ``+``; its backward adds as many again.
With a small model most of a layer's time is that traffic (and page faults for the fresh
buffers), not the matmuls.  ``LoraLinear`` below computes ``x W^T + s (x A^T) B^T`` as one matmul
plus one in-place ``addmm_`` and its backward as ``g W + s (g B) A`` the same way, reusing ``g B``
for both the input gradient and ``A``'s gradient.  The result is the same to float rounding.

``fuse_lora(model)`` switches every eligible peft LoRA ``Linear`` of a model to it; modules it
cannot express exactly (dropout during training, DoRA and other variants, several active
adapters, merged weights, a LoRA bias, quantized weights) keep peft's own forward.

``linear_cross_entropy`` is the output head and the loss in one: it goes through the labelled
positions a chunk at a time, so a full (positions x vocabulary) logits tensor never exists (4 GB
in float32 for 8k positions of a 128k vocabulary), and computes the gradient while the chunk's
logits are at hand, turning them into the softmax gradient in place (the idea of Liger Kernel's
fused linear cross-entropy, in plain torch so it runs on any device).

``compile_layers`` hands each decoder layer to ``torch.compile``, which fuses what is left between
the matmuls (norms, rotary embeddings, SwiGLU, residual adds) into a few kernels per layer.
"""

from __future__ import annotations

import types
from typing import Any

import torch

# Logits handled at once on a CPU: 32 MB of float32 (170 rows of a 49k vocabulary, 65 of 128k),
# large enough for efficient matmuls and small enough to stay in cache; 8x that on a GPU, where
# a matmul needs more rows to fill the device.
_LOGITS_CHUNK_ELEMENTS = 1 << 23


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight^T`` against ``targets``, plus # argmax hits."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        want_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_rows = hidden.shape[0]
        need_hidden = want_grad and ctx.needs_input_grad[0]
        need_weight = want_grad and ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.int64, device=hidden.device)
        # Under autocast, cast once here rather than the whole head once per chunk.
        device_type = hidden.device.type
        compute_dtype = (
            torch.get_autocast_dtype(device_type)
            if torch.is_autocast_enabled(device_type)
            else weight.dtype
        )
        head = weight.to(compute_dtype)
        budget = _LOGITS_CHUNK_ELEMENTS * (8 if device_type == "cuda" else 1)
        chunk = max(1, budget // weight.shape[0])
        with torch.autocast(device_type, enabled=False):
            for start in range(0, n_rows, chunk):
                rows = hidden[start : start + chunk].to(compute_dtype)
                wanted = targets[start : start + chunk]
                logits = (rows @ head.t()).float()
                log_norm = torch.logsumexp(logits, dim=-1)
                loss += (log_norm - logits.gather(1, wanted[:, None]).squeeze(1)).sum()
                correct += (logits.argmax(dim=-1) == wanted).sum()
                if grad_hidden is None and grad_weight is None:
                    continue
                # d loss / d logits = softmax - one_hot(target), built in the logits' memory.
                grad_logits = logits.sub_(log_norm[:, None]).exp_()
                grad_logits[torch.arange(len(wanted), device=wanted.device), wanted] -= 1
                if grad_hidden is not None:
                    grad_hidden[start : start + chunk] = grad_logits.to(compute_dtype) @ head
                if grad_weight is not None:
                    grad_weight.addmm_(grad_logits.t(), rows.float())
        ctx.save_for_backward(*(t for t in (grad_hidden, grad_weight) if t is not None))
        ctx.has = (grad_hidden is not None, grad_weight is not None)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(
        ctx: Any, grad_loss: torch.Tensor, _grad_correct: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        saved = iter(ctx.saved_tensors)
        grad_hidden = grad_weight = None
        if ctx.has[0]:
            computed = next(saved)
            grad_hidden = computed * grad_loss.to(computed.dtype)
        if ctx.has[1]:
            grad_weight = (next(saved) * grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, # positions whose argmax is the target) of ``hidden @ weight^T``.

    ``hidden`` is (positions, hidden size), ``weight`` the output head's (vocabulary, hidden
    size) matrix, ``targets`` (positions,) token ids.  Differentiable in ``hidden`` and
    ``weight``; the gradient is computed during the forward, so the forward costs what forward
    and backward together would and the backward only scales it.
    """
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss, correct = LinearCrossEntropy.apply(hidden, weight, targets, want_grad)
    return loss, correct


def _head_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _logits_chunk(hidden: torch.Tensor, weight: torch.Tensor) -> int:
    budget = _LOGITS_CHUNK_ELEMENTS * (8 if hidden.device.type == "cuda" else 1)
    return max(1, budget // weight.shape[0])


class LinearLogProbs(torch.autograd.Function):
    """Log-probability of each position's target under ``softmax(hidden @ weight^T)``.

    Unlike `LinearCrossEntropy` the result is one number per position (a preference loss sums
    them per sequence and weighs each sequence differently), so the gradient cannot be finished
    during the forward: the backward recomputes each chunk's logits instead of keeping them.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        compute_dtype = _head_dtype(hidden, weight)
        head = weight.to(compute_dtype)
        chunk = _logits_chunk(hidden, weight)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                logits = (hidden[start : start + chunk].to(compute_dtype) @ head.t()).float()
                wanted = targets[start : start + chunk]
                picked = logits.gather(1, wanted[:, None]).squeeze(1)
                out[start : start + chunk] = picked - torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.compute_dtype = compute_dtype
        ctx.mark_non_differentiable(targets)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, targets = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        compute_dtype = ctx.compute_dtype
        head = weight.to(compute_dtype)
        chunk = _logits_chunk(hidden, weight)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                rows = hidden[start : start + chunk].to(compute_dtype)
                wanted = targets[start : start + chunk]
                scale = grad_out[start : start + chunk].float()
                logits = (rows @ head.t()).float()
                # d logp / d logits = one_hot(target) - softmax, times the incoming gradient.
                grad_logits = torch.softmax(logits, dim=-1).mul_(-scale[:, None])
                grad_logits[torch.arange(len(wanted), device=wanted.device), wanted] += scale
                if grad_hidden is not None:
                    grad_hidden[start : start + chunk] = grad_logits.to(compute_dtype) @ head
                if grad_weight is not None:
                    grad_weight.addmm_(grad_logits.t(), rows.float())
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None


def linear_log_probs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Per position, ``log softmax(hidden @ weight^T)[target]``, a chunk of positions at a time
    (never a full logits tensor); differentiable in ``hidden`` and ``weight``."""
    result: torch.Tensor = LinearLogProbs.apply(hidden, weight, targets)
    return result


class LoraLinear(torch.autograd.Function):
    """``x W^T + b + scaling * (x A^T) B^T`` with gradients for whatever requires them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        down = flat @ lora_a.t()  # (tokens, rank): small
        out = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
        out.addmm_(down, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(flat, weight, lora_a, lora_b, down)
        ctx.scaling = scaling
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        flat, weight, lora_a, lora_b, down = ctx.saved_tensors
        scaling = ctx.scaling
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_down = grad @ lora_b  # (tokens, rank), without the scaling (applied below)
        grad_x = grad_weight = grad_bias = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight
            grad_x.addmm_(grad_down, lora_a, alpha=scaling)
            grad_x = grad_x.view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t() @ flat
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        if ctx.needs_input_grad[3]:
            grad_a = (grad_down.t() @ flat).mul_(scaling)
        if ctx.needs_input_grad[4]:
            grad_b = (grad.t() @ down).mul_(scaling)
        return grad_x, grad_weight, grad_bias, grad_a, grad_b, None


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """Forward of a peft LoRA ``Linear``: fused when the plain case applies, else peft's own.

    Under autocast (bf16 on a GPU, or a CPU that has it) the inputs are cast to the autocast
    dtype first, as autocast would cast them for peft's three matmuls, and the fused function
    runs in that dtype.
    """
    adapters = [name for name in self.active_adapters if name in self.lora_A]
    if (
        args
        or kwargs
        or self.disable_adapters
        or self.merged
        or len(adapters) != 1
        or adapters[0] in self.lora_variant
        or (self.training and not isinstance(self.lora_dropout[adapters[0]], torch.nn.Identity))
    ):
        return type(self).forward(self, x, *args, **kwargs)
    name = adapters[0]
    base = self.base_layer
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        tensors = [x, base.weight, base.bias, lora_a.weight, lora_b.weight]
        if lora_b.bias is not None or any(
            t is not None and not t.is_floating_point() for t in tensors
        ):
            return type(self).forward(self, x, *args, **kwargs)
        cast = [None if t is None else t.to(dtype) for t in tensors]
        with torch.autocast(device_type, enabled=False):
            return LoraLinear.apply(*cast, self.scaling[name])
    if lora_b.bias is not None or not (x.dtype == base.weight.dtype == lora_a.weight.dtype):
        return type(self).forward(self, x, *args, **kwargs)
    return LoraLinear.apply(
        x, base.weight, base.bias, lora_a.weight, lora_b.weight, self.scaling[name]
    )


def fuse_lora(model: torch.nn.Module) -> int:
    """Route ``model``'s peft LoRA linears through ``LoraLinear``; returns how many."""
    try:
        from peft.tuners.lora.layer import Linear as PeftLoraLinear
    except ImportError:  # no peft, no LoRA modules
        return 0
    fused = 0
    for module in model.modules():
        if type(module) is PeftLoraLinear and isinstance(module.base_layer, torch.nn.Linear):
            module.forward = types.MethodType(_fused_forward, module)  # type: ignore[method-assign]
            fused += 1
    return fused


def compile_layers(model: Any) -> int:
    """``torch.compile`` the forward of every decoder layer of ``model``; returns how many.

    Shapes are dynamic (rows change length every step); the varlen attention inside each layer
    stays eager (``attention.keep_attention_eager``), so per-row example boundaries never
    cause a recompile.  Layers share one compiled graph: parameters are inputs, not constants.
    The forward is compiled rather than the module's ``__call__`` so that wrappers set on it
    later (``memory.LayerCheckpointing``) stay outside the graph.
    A worker process trains one job after another: the graphs of earlier runs are dropped
    first, or they would pile up and, past dynamo's cache limit, silently turn compiling off.
    """
    import torch._dynamo

    from worker.training.attention import keep_attention_eager
    from worker.training.memory import decoder_layers

    torch._dynamo.reset()
    keep_attention_eager()
    layers = decoder_layers(model)
    for layer in layers or []:
        layer.forward = torch.compile(layer.forward, dynamic=True)
    return len(layers or [])
