"""A simulated Istio data plane for tests and demos (there is no Envoy here).

- `routing`: pure: which destination a VirtualService sends one request to (matches, weights, mirror).
- `headers`: pure: the headers and authority that destination (and a mirror) receives after the route's and
  the destination's header operations.
- `backends`: fake LLM backends whose error rate, latency, token counts, model name, time to first token,
  inter-token latency and truncation can change while they serve.
- `metrics`: Istio's standard request metrics (plus LLM tokens) as a sidecar with reporter="destination" would
  export them, and vLLM's request metrics (`vllm:*`, by `model_name`) as each backend's engine would.
- `watcher`: the live VirtualServices, listed and watched from the API server.
- `load`: steady flows of requests from many user ids, optionally with each user's sticky bucket.
- `stats`: request counts, and which destinations answered each user.
- `simulator`: all of it together: load generator, request handling, `/metrics` and a JSON control API.

Run it with `python -m modelrollout_dev.sim --help`.
"""
