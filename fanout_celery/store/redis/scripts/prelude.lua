-- Prepended to every script by lua.py.
-- The statuses a run never leaves; written once, here (model/records.py has the same set).
local FINAL = {completed = true, failed = true, cancelled = true, skipped = true}

local function is_final(status)
  return status ~= false and status ~= nil and FINAL[status] == true
end
