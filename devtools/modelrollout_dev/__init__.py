"""The dev tooling of modelrollout, installed from the repository (distribution `modelrollout-dev`), never
part of the operator's package or image:

- `devenv`: the local world the operator is tested and demonstrated against (`modelrollout dev ...`).
- `sim`: a simulated Istio data plane with fake LLM backends (`modelrollout sim`,
  `python -m modelrollout_dev.sim`).
- `demo`: `make demo` (`modelrollout demo`).

The runtime CLI finds these commands through the `modelrollout.commands` entry-point group; the operator
never imports this package.
"""
