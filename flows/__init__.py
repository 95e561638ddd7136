"""The Prefect flows: the pipeline on top, one flow per stage beneath it.

Prefect reads its settings from the environment once, when it is first imported, so the defaults
for local runs are set here, before any flow module imports it; a value the user set wins.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A run without PREFECT_API_URL starts Prefect's ephemeral server, and Prefect's 20 s for its start
# is not enough on a machine whose cores are busy ("Timed out while attempting to connect to
# ephemeral Prefect API server" before the first stage).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
