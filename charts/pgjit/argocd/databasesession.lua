-- Argo CD health check for pgjit's DatabaseSession, argocd-cm key
-- resource.customizations.health.pgjit.dev_DatabaseSession. docs/gitops.md repeats this file.
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
local phase = obj.status.phase
local stalled = condition("Stalled")
local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
elseif phase == "Ended" and ready.reason == "AccessRevoked" then
  -- The Roles no longer allow what Git declares: as wrong as a refusal.
  hs.status = "Degraded"
  hs.message = explain(ready)
elseif phase == "Expired" or phase == "Ended" then
  -- Over as designed, not broken: shown, without painting the app red. Deleting the session
  -- lets the next sync open a new one. (Checked before Stalled, which ended sessions also
  -- carry so that kstatus reports them Failed rather than forever InProgress.)
  hs.status = "Suspended"
  hs.message = explain(ready) .. " (delete the DatabaseSession to open a new one)"
elseif phase == "Failed" or (stalled ~= nil and stalled.status == "True") then
  -- Refused (AccessDenied, UserConflict, RolesChanged, ...): Git asks for access that
  -- pgjit will not give.
  hs.status = "Degraded"
  hs.message = explain(stalled or ready)
elseif phase == "Active" and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = explain(ready)
elseif ready.reason == "AwaitingApproval" then
  -- Waiting for reviewers: in progress, not broken (a denial or the pending timeout makes it
  -- Failed, above). The message names the reviewers.
  hs.status = "Progressing"
  hs.message = explain(ready)
else
  -- Pending: being opened, or waiting for its Database.
  hs.status = "Progressing"
  hs.message = explain(ready)
end
return hs
