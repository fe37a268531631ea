-- Argo CD action discovery for modelrollout.io/ModelRollout: which of the actions fit the rollout now.
-- Argo CD runs it with gopher-lua (Lua 5.1), the live object in `obj`: keep to Lua 5.1's base library.
-- The rules are the operator's own (an action that does not fit is ignored and recorded as `ignored: ...` in
-- status.lastAction), as far as the object shows them: a disabled action would have been ignored. One rule
-- needs the operator: right after Git names a new stable/canary pair, until the operator starts it, an
-- action offered here is ignored (it was meant for the previous pair).
local actions = {}
for _, name in ipairs({"promote", "promote-full", "abort", "retry", "resume"}) do
  actions[name] = {disabled = true}
end

local status = obj.status
if type(status) ~= "table" or status.phase == nil then
  return actions -- the operator has not seen the rollout yet
end
if status.pairHash == nil then
  return actions -- no rollout of a stable/canary pair has started (e.g. its VirtualService is missing)
end
if type(status.conditions) == "table" then
  for _, condition in ipairs(status.conditions) do
    if type(condition) == "table" and condition.type == "InvalidSpec" and condition.status == "True" then
      return actions -- the operator acts on nothing until the spec is fixed in Git
    end
  end
end

local spec = obj.spec
if type(spec) ~= "table" then
  spec = {}
end
local phase = status.phase
local onStable = phase == "RolledBack" or phase == "Aborted"

-- promote: not once Promoted or back on stable, and not while spec.paused freezes the rollout.
if phase ~= "Promoted" and not onStable and spec.paused ~= true then
  actions["promote"].disabled = false
  -- promote-full: only while there is a stage to go to (below the current stage's weight, or a later stage).
  local stages = spec.stages
  if type(stages) == "table" and #stages > 0 then
    local current = tonumber(status.stage) or 0 -- 0-based, as the operator counts
    if current > #stages - 1 then
      current = #stages - 1
    end
    local weight = stages[current + 1].weight or 0
    if (tonumber(status.canaryWeight) or 0) < weight or current + 1 < #stages then
      actions["promote-full"].disabled = false
    end
  end
end
-- abort: while the canary still gets traffic to take away.
if phase ~= "Promoted" and not onStable then
  actions["abort"].disabled = false
end
-- retry: only from stable again.
if onStable then
  actions["retry"].disabled = false
end
-- resume: only a hold is lifted by it.
if status.hold ~= nil then
  actions["resume"].disabled = false
end
return actions
