-- Argo CD health check for whatsapp.released.io/WhatsAppAgent.
-- Install it as resource.customizations.health.whatsapp.released.io_WhatsAppAgent in argocd-cm
-- (docs/argocd.md). Written for Lua 5.1 (Argo CD's gopher-lua); tested with Lua 5.1 and 5.4.
--
--   Healthy      Ready=True for the current generation
--   Progressing  not reconciled yet: no status, an older observedGeneration, Ready Unknown,
--                Ready=False for a passing reason (a rollout), or being deleted while a
--                finalizer cleans up outside the cluster
--   Suspended    Ready=False because spec.suspend scaled the bot to zero
--   Degraded     Ready=False for any other reason: that reason and its message
local hs = {}

-- Ready=False reasons that pass by themselves (whatsapp_operator.handlers / status).
local passing_reasons = {
  RolloutInProgress = true,
  RotationInProgress = true,
  Reconciling = true,
}

local function find_condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == kind then
      return condition
    end
  end
  return nil
end

local function describe(condition)
  local reason = condition.reason or "NotReady"
  if condition.message ~= nil and condition.message ~= "" then
    return reason .. ": " .. condition.message
  end
  return reason
end

local metadata = obj.metadata or {}

if metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  if metadata.finalizers ~= nil and #metadata.finalizers > 0 then
    hs.message = "Deleting: waiting for finalizer " .. table.concat(metadata.finalizers, ", ")
  else
    hs.message = "Deleting"
  end
  return hs
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the agent"
  return hs
end

local ready = find_condition(status.conditions, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

local generation = metadata.generation
local observed = ready.observedGeneration or status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Reconciling generation " .. tostring(generation) ..
    " (observed " .. tostring(observed or "none") .. ")"
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
elseif ready.status == "False" and ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(ready)
elseif ready.status == "False" and passing_reasons[ready.reason] then
  hs.status = "Progressing"
  hs.message = describe(ready)
elseif ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready)
else
  hs.status = "Progressing"
  hs.message = describe(ready)
end
return hs
