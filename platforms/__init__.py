"""Where revisions run: the platform interface and its implementations (memory, static file;
local processes and Kubernetes come later)."""
