"""The exchange as autograd functions: the forward exchange of the pooled outputs, whose
backward is the gradient exchange back to each table's owner (straight through the
compression: d x_hat / d x = I); and the upstream DLRM Req/Wait split of the same, so the
forward's collectives overlap the bottom MLP, and the backward's its backward.

The backward split mirrors the forward's: autograd runs ready nodes latest-created first, so
the Wait node (made after the bottom MLP) runs its backward before the bottom MLP's nodes and
launches the gradient exchange; the Req node (made before them) runs after them and finishes it."""
from __future__ import annotations

import torch


def zero_grads(ex, index, grads):
    """Outputs that got no gradient get zeros of their shape and dtype (the others pass as they
    are: the exchange gathers them in one op whatever their strides)."""
    slices = index.slices
    n_rows = slices[-1][1] if ex.loopback else slices[ex.rank][1] - slices[ex.rank][0]
    dev = ex.transport.device
    dtype = next((g.dtype for g in grads if g is not None), torch.float32)
    return [g if g is not None else torch.zeros(n_rows, ex.dim, device=dev, dtype=dtype) for g in grads]


class ExchangeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, exchange, compress: bool, bags, bounds, *pooled: torch.Tensor):
        ctx.exchange, ctx.compress, ctx.bounds = exchange, compress, bounds
        finish, ctx.index = exchange.begin_forward([p.detach() for p in pooled], compress, bags=bags, bounds=bounds)
        return tuple(finish())

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        ex = ctx.exchange
        return (None, None, None, None,
                *ex.backward(zero_grads(ex, ctx.index, grads), ctx.compress, ctx.index, ctx.bounds))


class Request(torch.autograd.Function):
    """Req half of the Req/Wait pair: launches the forward exchange (async); its backward hands
    the pooled outputs the gradients that the Wait half's backward exchanged."""

    @staticmethod
    def forward(ctx, exchange, compress: bool, bags, bounds, *pooled: torch.Tensor):
        ctx.exchange = exchange
        if exchange._inflight is not None:
            raise RuntimeError("Exchange.start: the previous exchange was never waited on")
        finish, index = exchange.begin_forward([p.detach() for p in pooled], compress, async_op=True, bags=bags,
                                               bounds=bounds)
        exchange._inflight = (finish, compress, index, bounds)
        return pooled[0].new_zeros(0)

    @staticmethod
    def backward(ctx, _token_grad):
        finish, ctx.exchange._backward_finish = ctx.exchange._backward_finish, None
        return (None, None, None, None, *finish())


class Wait(torch.autograd.Function):
    @staticmethod
    def forward(ctx, exchange, token: torch.Tensor):
        finish, ctx.compress, ctx.index, ctx.bounds = exchange._inflight
        exchange._inflight = None
        ctx.exchange = exchange
        return tuple(finish())

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        ex = ctx.exchange
        ex._backward_finish = ex.begin_backward(zero_grads(ex, ctx.index, grads), ctx.compress, ctx.index, ctx.bounds,
                                             async_op=True)  # in flight while the bottom MLP's backward runs
        return None, torch.zeros(0, device=ex.transport.device)


class PendingExchange:
    """A forward exchange in flight (torchrec's Awaitable): ``wait()`` -> the received tables."""

    def __init__(self, exchange, token: torch.Tensor):
        self.exchange, self.token = exchange, token

    def wait(self) -> list[torch.Tensor]:
        return list(Wait.apply(self.exchange, self.token))
