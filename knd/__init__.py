"""knd: serverless on one machine (the activator, the KPA and pods as local processes)."""
