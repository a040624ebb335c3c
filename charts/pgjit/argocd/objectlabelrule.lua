-- Argo CD health check for pgjit's ObjectLabelRule, argocd-cm key
-- resource.customizations.health.pgjit.dev_ObjectLabelRule. docs/gitops.md repeats this file.
-- Written for gopher-lua without the string library (Argo CD's default for custom
-- checks), and self-contained: argocd-cm offers no way to share code between keys.

local function condition(kind)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == kind then return c end
  end
  return nil
end

local function explain(c)
  return (c.reason or "NoReason") .. ": " .. (c.message or "")
end

local hs = {}
if obj.status == nil or obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for pgjit to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
local stalled = condition("Stalled")
local ready = condition("Ready")
if stalled ~= nil and stalled.status == "True" then
  -- LabelConflict: the message names the other rule and the label.
  hs.status = "Degraded"
  hs.message = explain(stalled)
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = explain(ready)
elseif ready ~= nil then
  hs.status = "Progressing"
  hs.message = explain(ready)
else
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
end
return hs
