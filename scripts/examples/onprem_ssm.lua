-- The AWS blog's on-premises VM, done with moongate: the SSM Agent keeps
-- /root/.aws/credentials filled with temporary credentials of the role
-- (AmazonSSMManagedInstanceCore + AmazonPrometheusRemoteWriteAccess);
-- moongate scrapes the local node exporter and writes to one AMP
-- workspace, re-reading the file whenever the agent rotates it.
-- Set AMP_URL to the workspace's remote_write URL, e.g.
--   https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-.../api/v1/remote_write
local mg = require "moongate"

local amp = mg.workspace{
  name = "amp",
  url = mg.env("AMP_URL")
    or "https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-00000000-0000-0000-0000-000000000000/api/v1/remote_write",
  -- region: taken from the URL (aps-workspaces.<region>.amazonaws.com)
  credentials = mg.aws.file{ path = mg.env("AWS_SHARED_CREDENTIALS_FILE") or "/root/.aws/credentials",
                             profile = "default" },
}

mg.global{ scrape_interval = "15s", external_labels = { site = "onprem" } }
mg.scrape{ job = "node", targets = { "127.0.0.1:9100" } }
