"""Names of the AMQP headers we set ourselves.

None starts with `x-`: that prefix is the broker's bookkeeping (x-death, x-delivery-count),
which it may reset or ignore when a client sets it (tests/versions shows how 3.10 and 4.0
differ), and our retry count must survive any broker version.
"""

ATTEMPT = "retry-attempt"  # how many times the handler has failed on this message so far
DEFERRALS = "deferrals"  # how many times it waited for an earlier event of its order

ERROR_CLASS = "error-class"  # poison | exhausted | permanent | out-of-order
ERROR_SERVICE = "error-service"
ERROR_TYPE = "error-type"  # the exception's class name
ERROR_MESSAGE = "error-message"
ERROR_ATTEMPTS = "error-attempts"
ERROR_AT = "error-at"  # ISO 8601, UTC
ERROR_QUEUE = "error-queue"  # the work queue it came from: where a replay sends it

ERROR_HEADERS = (
    ERROR_CLASS, ERROR_SERVICE, ERROR_TYPE, ERROR_MESSAGE, ERROR_ATTEMPTS, ERROR_AT, ERROR_QUEUE,
)
