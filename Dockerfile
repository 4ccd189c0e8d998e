# gradserve: the same steps as scripts/serve.sh, in two stages.
# No Docker engine runs on the development machines, so CI tests what this file promises without one
# (e2e/container/run_tests.sh): the binary built by the same script as the build stage, in a bookworm
# root set up by the same script as the runtime stage, run with this file's ENTRYPOINT, USER and
# HEALTHCHECK (read from here), read-only except /data. Build from the repository root:
#   docker build -t gradserve .

# --- build: Swift 6 with OpenBLAS headers --------------------------------------------------
FROM swift:6.1-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libopenblas-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift Package.resolved ./
COPY Sources ./Sources
COPY Tests ./Tests
COPY deploy/container/build.sh ./deploy/container/
# the one place for the build flags (--static-swift-stdlib) and what is copied out (binary + resource bundle)
RUN deploy/container/build.sh /out

# --- runtime: slim Debian with the OpenBLAS runtime ----------------------------------------
FROM debian:bookworm-slim
# the one list of runtime packages (runtime-packages.txt), the gradserve user (uid 10001) and /data
COPY deploy/container/runtime-setup.sh deploy/container/runtime-packages.txt /tmp/runtime-setup/
RUN sh /tmp/runtime-setup/runtime-setup.sh && rm -rf /tmp/runtime-setup
COPY --from=build /out/ /usr/local/bin/
USER gradserve
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["gradserve", "serve", "--host", "0.0.0.0", "--port", "8080", "--data-dir", "/data"]
