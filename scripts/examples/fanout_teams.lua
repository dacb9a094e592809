-- Fan-out by team: series go to the workspace of the team that owns them,
-- three workspaces in two accounts, each reached with its own role
-- (STS AssumeRole on top of the instance's credentials); everything else
-- goes to a default workspace. One pass, decided once per new series.
local mg = require "moongate"

local function ws(name, account, region, id)
  return mg.workspace{
    name = name,
    url = string.format("https://aps-workspaces.%s.amazonaws.com/workspaces/%s/api/v1/remote_write", region, id),
    credentials = mg.aws.assume_role{
      role_arn = string.format("arn:aws:iam::%s:role/amp-writer", account),
      external_id = "moongate",
    },
  }
end

local default = mg.workspace{
  name = "default",
  url = "https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-default/api/v1/remote_write",
  credentials = mg.aws.chain(),
}
local teams = {
  payments = ws("payments", "222222222222", "eu-west-1", "ws-payments"),
  search = ws("search", "111111111111", "us-east-1", "ws-search"),
  ads = ws("ads", "111111111111", "us-east-1", "ws-ads"),
}

mg.scrape{ job = "apps", targets = { "10.0.0.10:8080" } }

function mg.route(s)
  return teams[s.labels.team] or default
end
