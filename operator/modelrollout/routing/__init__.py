"""Traffic routing: a small Router protocol and its Istio VirtualService implementation.

`router` holds the protocol and its types, `istio` the pure transform on VirtualService dicts, and
`istio_router` the only part that talks to the API server.
"""
