"""The resource limits of ``tirec serve``, in one place for gRPC, REST and the command line.

The defaults are chosen so that no client, however it misbehaves, can take down a server on a
2-core, 24 GiB machine: every request, connection and thread the server holds is bounded, and a
caller beyond a bound gets an immediate error (gRPC RESOURCE_EXHAUSTED, HTTP 413/503) rather
than a hang. Worst case with every limit at its default and every slot filled with the largest
request allowed: gRPC holds ``max_concurrent_rpcs`` messages of ``max_message_bytes`` (4 GiB)
plus the decoded inputs of ``grpc_workers`` running calls (about 2 GiB); REST holds the bodies of
``rest_api_num_threads + rest_max_queued_requests`` requests (2.3 GiB) plus the parsed JSON of
``rest_api_num_threads`` running ones (a 64 MiB JSON body parses into about 0.5 GiB of Python
objects, so about 2 GiB). Raise a limit only where the machine has room for it.

This module imports nothing heavy, so the CLI can build its flags from it quickly.
"""
from __future__ import annotations

import dataclasses

MAX_GRPC_MESSAGE_BYTES = 2**31 - 1  # gRPC's own ceiling (and TF Serving's setting)


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one client, or all of them together, can make the server hold.

    Args:
      max_message_bytes: largest gRPC message (received or sent) and REST request body. Bounds
        the memory a single request can claim; larger gRPC messages get RESOURCE_EXHAUSTED,
        larger REST bodies HTTP 413 before the body is read (a ``Content-Length`` over the limit
        is refused at once, a chunked body when it crosses the limit).
      max_examples_per_request: most rows (batch dimension) or tf.Examples per request, checked
        before any array is decoded or tf.Example built (INVALID_ARGUMENT / HTTP 400 beyond).
        Bounds the work and the output size of one request.
      grpc_workers: gRPC handler threads (TF Serving's ``--grpc_max_threads``). With batching, at
        least about twice ``max_batch_size`` / rows per request lets batches fill.
      max_concurrent_rpcs: most gRPC calls running or waiting for a handler thread; a call
        beyond it gets RESOURCE_EXHAUSTED at once. Bounds the messages held in memory and keeps
        a flood of calls from queuing without end.
      rest_api_num_threads: REST worker threads running requests (TF Serving's
        ``--rest_api_num_threads``). Reading requests and writing responses happens off these
        threads, so a slow client never holds one.
      rest_max_queued_requests: REST requests admitted (headers read) but waiting for a worker;
        a request beyond ``rest_api_num_threads + rest_max_queued_requests`` gets HTTP 503 with
        ``Retry-After`` at once (0 admits only as many as there are workers). Bounds the request
        bodies held in memory.
      rest_api_timeout_in_ms: time a REST client has to send one whole request (headers and
        body), to take the response, and to start its next request on a kept-alive connection
        (TF Serving's ``--rest_api_timeout_in_ms``). A silent or trickling client is dropped
        after it (slowloris).
      rest_max_connections: most open REST connections; one beyond it gets HTTP 503 and is
        closed. Bounds the file descriptors clients can take from the process.
    """

    max_message_bytes: int = 64 << 20
    max_examples_per_request: int = 10000
    grpc_workers: int = 32
    max_concurrent_rpcs: int = 64
    rest_api_num_threads: int = 4
    rest_max_queued_requests: int = 32
    rest_api_timeout_in_ms: int = 30000
    rest_max_connections: int = 256

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            least = 0 if field.name == "rest_max_queued_requests" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"serve: {field.name} must be an integer >= {least}; received "
                                 f"{field.name}={value!r}")
        if self.max_message_bytes > MAX_GRPC_MESSAGE_BYTES:
            raise ValueError(f"serve: max_message_bytes must be <= {MAX_GRPC_MESSAGE_BYTES}; received "
                             f"max_message_bytes={self.max_message_bytes}")

    @property
    def rest_timeout_seconds(self) -> float:
        """``rest_api_timeout_in_ms`` in seconds."""
        return self.rest_api_timeout_in_ms / 1000.0

    @property
    def rest_max_requests(self) -> int:
        """REST requests admitted at once: running plus queued."""
        return self.rest_api_num_threads + self.rest_max_queued_requests


__all__ = ["ServerLimits", "MAX_GRPC_MESSAGE_BYTES"]
