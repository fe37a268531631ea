"""Traffic routing: a small Router protocol and its Istio VirtualService implementation.

`router` holds the protocol and its types, `istio` the pure transform on VirtualService dicts, and
`istio_router` the only part that talks to the API server. Sticky A/B assignment adds two pure pieces:
`buckets` (the header regexes of the canary's and stable's buckets) and `bucket_lua` (the Envoy Lua filter
that computes a user's bucket in the mesh).
"""
