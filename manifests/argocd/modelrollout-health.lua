-- Argo CD health check for modelrollout.io/ModelRollout.
-- Argo CD runs it with gopher-lua (Lua 5.1) and the live object in `obj`; keep to Lua 5.1.
-- The operator decides the phase; this maps it to an Argo CD health status and shows the operator's message.
local hs = {}

-- Before the operator writes a status the object has none, or the CRD's default {observedGeneration = 0}.
local function recorded(status)
  if type(status) ~= "table" then
    return false
  end
  for key, value in pairs(status) do
    if key ~= "observedGeneration" or value ~= 0 then
      return true
    end
  end
  return false
end

local status = obj.status
if not recorded(status) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator: no status yet"
  return hs
end

-- A status older than the spec describes a spec that no longer exists: wait for the operator to catch up.
local generation = nil
if type(obj.metadata) == "table" then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator: status is for generation " .. tostring(observed or "none")
    .. ", spec is at " .. tostring(generation)
  return hs
end

local health = {
  Pending = "Progressing",
  Progressing = "Progressing",
  Paused = "Suspended",      -- awaiting approval (promote), spec.paused, or a hold (resume)
  Promoted = "Healthy",
  RolledBack = "Degraded",
  Aborted = "Degraded",
  Degraded = "Degraded",
}

local phase = status.phase
local message = status.message

-- A spec the operator cannot act on is said beside the phase (a Promoted rollout stays Promoted): whatever the
-- phase, this generation did not take effect, which Argo CD must show.
if type(status.conditions) == "table" then
  for _, condition in ipairs(status.conditions) do
    if type(condition) == "table" and condition.type == "InvalidSpec" and condition.status == "True" then
      hs.status = "Degraded"
      hs.message = "invalid spec: " .. tostring(condition.message or "")
      return hs
    end
  end
end
if type(message) ~= "string" or message == "" then
  message = "phase " .. tostring(phase)
  if type(status.reason) == "string" and status.reason ~= "" then
    message = message .. " (" .. tostring(status.reason) .. ")"
  end
end

if phase ~= nil and health[phase] ~= nil then
  hs.status = health[phase]
  hs.message = message
else
  hs.status = "Unknown"
  hs.message = "unknown phase " .. tostring(phase) .. ": " .. message
end
return hs
