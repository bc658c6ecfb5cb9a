"""HTTP routes of payment: validate, call the use case, map its outcome to a status code."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict

from contracts import Amount, Currency, CustomerId, Email
from messaging.chassis.http import problem
from messaging.observability import correlation
from payment.domain import NotRefundable, Order
from payment.handlers import (
    IdempotencyKeyReused,
    OrderAlreadyPaid,
    PayCommand,
    PaymentNotFound,
    PaymentService,
)


class PaymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: uuid.UUID
    customer_id: CustomerId
    email: Email
    amount: Amount
    currency: Currency


class PaymentView(BaseModel):
    payment_id: uuid.UUID
    order_id: uuid.UUID
    customer_id: str
    email: str
    amount: int
    currency: str
    status: str
    correlation_id: str

    @classmethod
    def of(cls, order: Order) -> PaymentView:
        return cls(payment_id=order.payment_id, order_id=order.order_id,
                   customer_id=order.customer_id, email=order.email, amount=order.amount,
                   currency=order.currency, status=order.status.value,
                   correlation_id=order.correlation_id)


IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
]


def router(payments: PaymentService) -> APIRouter:
    api = APIRouter()

    @api.post("/payments", status_code=status.HTTP_201_CREATED, response_model=PaymentView,
              responses={409: problem("The order is already paid (by another payment)")})
    async def pay(
        body: PaymentRequest, response: Response, idempotency_key: IdempotencyKey = None
    ) -> PaymentView:
        command = PayCommand(
            order_id=body.order_id, customer_id=body.customer_id, email=str(body.email),
            amount=body.amount, currency=body.currency,
            correlation_id=correlation.get() or correlation.valid_or_new(None),
            idempotency_key=idempotency_key,
        )
        try:
            order, replayed = await payments.pay(command)
        except OrderAlreadyPaid as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        except IdempotencyKeyReused as exc:
            # Shaped like every other 422: a list of problems, each naming where it is.
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{
                "type": "idempotency_key_reused", "loc": ["header", "Idempotency-Key"],
                "msg": str(exc),
            }]) from None
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return PaymentView.of(order)

    @api.get("/payments/{payment_id}", response_model=PaymentView,
             responses={404: NO_SUCH_PAYMENT})
    async def get_payment(payment_id: str) -> PaymentView:
        try:
            return PaymentView.of(await payments.get(_payment_id(payment_id)))
        except PaymentNotFound:
            raise _not_found(payment_id) from None

    @api.post("/payments/{payment_id}/refund", response_model=PaymentView,
              responses={404: NO_SUCH_PAYMENT,
                         409: problem("The payment is not in a state that can be refunded")})
    async def refund(payment_id: str) -> PaymentView:
        try:
            return PaymentView.of(await payments.refund(_payment_id(payment_id)))
        except PaymentNotFound:
            raise _not_found(payment_id) from None
        except NotRefundable as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None

    return api


NO_SUCH_PAYMENT = problem("No payment has this id")


def _not_found(payment_id: str) -> HTTPException:
    shown = payment_id if len(payment_id) <= 64 else payment_id[:64] + "…"  # bounded echo
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no payment {shown}")


def _payment_id(text: str) -> uuid.UUID:
    """A path id that is not a UUID names no payment: 404, like any unknown id."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise PaymentNotFound(text) from None
