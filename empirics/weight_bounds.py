"""thm4.4's weight-space quantities for one Conv1d, Conv2d or Linear layer, per output channel.

A layer y = X W + b written as a matrix product: for Linear, X is its (N, in) input and W_{.j} the
j-th row of the weight; for Conv1d, X is the unfolded input, one row per (sample, output position)
holding the (in_channels * kernel) values that position sees (zero padding, stride and dilation as
the conv), and W_{.j} the j-th filter flattened channel-major as `weight[j].reshape(-1)`; for Conv2d
likewise, one row per (sample, output row, output column), sample-major then row-major, holding the
in_channels * kh * kw values the position sees, ordered as `weight[j].reshape(-1)` (channel, kh, kw).
Then

    dL/dW_{.j} = X^T dL/dy_j         (bias excluded; y_j the layer output of channel j, as a column)
    ||dL/dW_{.j}||^2 <= ||X||_2^2 ||dL/dy_j||^2

With y the BN input (the layer followed by BN), ||dL/dy_j||^2 is thm4.1's left side, so verify can
chain ||dL/dW_{.j}||^2 <= ||X||_2^2 ||dL/dy_j||^2 <= ||X||_2^2 RHS_thm4.1.

Per channel j (float64 numpy arrays, length C_out): grad_w_sq = ||dL/dW_{.j}||^2 from autograd,
dy_sq = ||dL/dy_j||^2, identity_err = ||dL/dW_{.j} - X^T dL/dy_j|| (rounding only: the identity is
exact), and the scalars x_spec_sq = ||X||_2^2 and rows = number of rows of X (= m of the BN after it).
For a layer reparametrised in weight space (`norms.ReparametrisedConv1d` ..., W = s hat(v)) the weight
differentiated is its direction v: grad_w_sq = ||dL/dv_j||^2, the left side of the weight-space statements,
and identity_err is NaN (dL/dv = J^T X^T dy: the normaliser's identity, measured by the capture).

||X||_2^2 is the largest eigenvalue of the smaller Gram matrix (X^T X, or X X^T when X is wide),
formed and diagonalised in float64 (eigvalsh: exact to rounding, relative error ~ rows * 2^-53; the
Gram of a VGG-1d layer is at most 192 x 192, far cheaper than an SVD of X, and needs no power
iteration or tolerance). For VGG-11/16 on CIFAR-10 at batch 128 the Gram is min(N * H * W, 9 C_in)
square, at most 2304 x 2304 (the 256-channel convs at 8 x 8), and X itself up to 32768 x 576
float64 (150 MB, the second conv): probe VGG-2d sparsely. Train() mode, via `landscape.training_function`: no side effects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .landscape import LossFn, parameter_dict, training_function, training_loss


def unfolded_input(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """X: (N, in) for Linear; (N * L_out, C_in * kernel) for Conv1d; (N * H_out * W_out, C_in * kh * kw)
    for Conv2d; rows ordered sample-major (then output row, then output column)."""
    if isinstance(layer, nn.Linear):
        if inputs.dim() != 2:
            raise ValueError(f"Linear input has shape {tuple(inputs.shape)}; only (N, features) is supported")
        return inputs
    if not isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        raise TypeError(f"{layer!r} is neither Conv1d nor Linear nor Conv2d; thm4.4 terms need y = X W")
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ValueError(f"{layer!r}: only groups=1, zero padding given as integers is supported "
                         f"(got groups={layer.groups}, padding={layer.padding!r}, padding_mode={layer.padding_mode!r})")
    channels = inputs.shape[1]
    if isinstance(layer, nn.Conv2d):
        columns = F.unfold(inputs, kernel_size=layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                           stride=layer.stride)  # (N, C_in * kh * kw, H_out * W_out)
        return columns.transpose(1, 2).reshape(-1, columns.shape[1])
    columns = F.unfold(inputs.unsqueeze(2), kernel_size=(1, layer.kernel_size[0]), dilation=(1, layer.dilation[0]),
                       padding=(0, layer.padding[0]), stride=(1, layer.stride[0]))  # (N, C_in * k, L_out)
    return columns.transpose(1, 2).reshape(-1, channels * layer.kernel_size[0])


def spectral_norm_sq(matrix: torch.Tensor) -> float:
    """||X||_2^2 = lambda_max of the smaller Gram matrix, in float64."""
    x = matrix.detach().double()
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    return float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0))


def weight_bound_terms_of_layers(model: nn.Module, layers: list[nn.Module], x: torch.Tensor,
                                 target: torch.Tensor, loss_fn: LossFn) -> list[dict]:
    """The thm4.4 terms above for each of `layers` (Conv1d, Conv2d or Linear, each run once per forward),
    all from ONE forward+backward: every layer's X and dL/dy are captured on the same pass."""
    with training_function(model):
        params = parameter_dict(model)
        names = {id(p): name for name, p in model.named_parameters()}
        weight_names = [names.get(id(layer.weight)) for layer in layers]
        for layer, name in zip(layers, weight_names):
            if name is None:
                raise ValueError(f"{layer!r} is not a layer of the model (its weight is not among "
                                 "model.named_parameters())")
        weights = {name: params[name].clone().requires_grad_(True) for name in weight_names}
        captured: list[dict[str, list[torch.Tensor]]] = [{"inputs": [], "outputs": []} for _ in layers]

        def keeper(store: dict):
            def keep(_module, args, output):
                store["inputs"].append(args[0].detach())
                store["outputs"].append(output)
            return keep

        handles = [layer.register_forward_hook(keeper(store)) for layer, store in zip(layers, captured)]
        try:
            loss = training_loss(model, {**params, **weights}, x, target, loss_fn)
        finally:
            for handle in handles:
                handle.remove()
        for layer, store in zip(layers, captured):
            if len(store["outputs"]) != 1:
                raise RuntimeError(f"{layer!r} ran {len(store['outputs'])} times in one forward; it must run once")
        gradients = torch.autograd.grad(loss, [weights[name] for name in weight_names]
                                        + [store["outputs"][0] for store in captured])
        results = []
        for index, (layer, store) in enumerate(zip(layers, captured)):
            grad_w, grad_y = gradients[index], gradients[len(layers) + index]
            matrix = unfolded_input(layer, store["inputs"][0]).double()  # (rows, fan_in)
            channels = grad_w.shape[0]
            grad_w = grad_w.detach().double().reshape(channels, -1)  # (C_out, fan_in)
            # (N, C_out, *spatial) -> (C_out, N * prod(spatial)), sample-major like the rows of X; (N, C_out) -> (C_out, N)
            dy = grad_y.detach().double().transpose(0, 1).reshape(channels, -1)
            # a reparametrised layer's weight is the direction v (W = s hat(v)): dL/dv = J^T X^T dy, not X^T dy, so
            # the identity is the capture's (its identity_err), not this one's
            identity_err = (torch.full((channels,), float("nan"), dtype=torch.float64) if hasattr(layer, "effective_weight")
                            else torch.linalg.vector_norm(grad_w - dy @ matrix, dim=1))
            results.append({
                "grad_w_sq": (grad_w**2).sum(1).cpu().numpy(),
                "dy_sq": (dy**2).sum(1).cpu().numpy(),
                "identity_err": identity_err.cpu().numpy(),
                "x_spec_sq": spectral_norm_sq(matrix),
                "rows": int(matrix.shape[0]),
            })
    return results


def weight_bound_terms(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor,
                       loss_fn: LossFn) -> dict:
    """Per output channel of `layer` (a Conv1d, Conv2d or Linear run once per forward): the thm4.4 terms above."""
    (result,) = weight_bound_terms_of_layers(model, [layer], x, target, loss_fn)
    return result
