# procstream in a container. Build and run with docker compose (docker-compose.yml) or:
#   docker build -t procstream .
#   docker run -d --name procstream --pid host -v /proc:/host/proc:ro \
#     --cap-drop ALL --cap-add DAC_READ_SEARCH --cap-add SYS_PTRACE \
#     --security-opt no-new-privileges:true --security-opt apparmor:unconfined \
#     -e PROCSTREAM_TOKEN -p 127.0.0.1:8765:8765 procstream
# See docs/deploy.md for what each option is for.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package from this source tree (README* is optional: the glob may match
# nothing), then drop the sources: the image runs the installed package, web viewer
# included (package data).
WORKDIR /src
COPY pyproject.toml README* ./
COPY procstream ./procstream
COPY web ./web
RUN pip install . && rm -rf /src
WORKDIR /

# Root, on purpose: reading other users' /proc/PID/io, /proc/PID/fd and /proc/PID/exe
# takes CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE, and a non-root user can't hold them
# without file capabilities on the Python binary. Run it with every capability dropped
# but those two (docker-compose.yml: cap_drop ALL, cap_add DAC_READ_SEARCH, SYS_PTRACE,
# plus NET_ADMIN for the kernel event source), no-new-privileges and a read-only root.
USER root

EXPOSE 8765

# /healthz needs no token; 503 (stale polls) and connection errors both fail the check.
# No curl in the slim image: Python's urllib, with proxies off so HTTP_PROXY can't
# redirect a loopback request.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8765/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["procstream"]
CMD ["serve", "--procfs", "/host/proc", "--listen", "0.0.0.0:8765"]
