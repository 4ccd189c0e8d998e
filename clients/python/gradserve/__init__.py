"""gradserve: derivatives of small MLPs as a service, from Python.

    from gradserve import Client
    from gradserve.torch import export          # needs torch

    J = Client().jacobian(export(model), x, t).jacobian.x    # [B, D', D]

``Client`` connects to ``$GRADSERVE_URL`` (default ``http://127.0.0.1:8080``). Errors are
:class:`GradserveError` subclasses carrying the server's problem details.
"""

from .client import DEFAULT_URL, Client
from .errors import (
    BadRequest,
    ConnectionFailed,
    DeadlineExceeded,
    FieldError,
    GradserveError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ServerBusy,
    ServerError,
    Unauthorized,
)
from .models import dumps
from .result import Result
from .tensors import read_safetensors, write_safetensors

__version__ = "0.1.0"

__all__ = [
    "Client",
    "DEFAULT_URL",
    "Result",
    "GradserveError",
    "FieldError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "PayloadTooLarge",
    "InvalidRequest",
    "ServerBusy",
    "DeadlineExceeded",
    "ServerError",
    "ConnectionFailed",
    "dumps",
    "read_safetensors",
    "write_safetensors",
]
