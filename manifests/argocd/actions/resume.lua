-- Argo CD resource action "resume" for modelrollout.io/ModelRollout: asks the operator to lift a hold
-- (Inconclusive, MetricsUnavailable, DriftLimit) and carry on.
-- Argo CD runs it with gopher-lua (Lua 5.1), the live object in `obj`: keep to Lua 5.1's base library.
-- It only sets the annotation modelrollout.io/action, which the operator consumes (removes) and
-- answers in status.lastAction; the spec is Git's and stays untouched.
if type(obj.metadata.annotations) ~= "table" then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["modelrollout.io/action"] = "resume"
return obj
