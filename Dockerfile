# gradserve: the same steps as scripts/serve.sh, in two stages.
# (No Docker engine runs on the development machines: this file is kept identical in substance
# to the README's commands, which CI exercises.)

# --- build: Swift 6 with OpenBLAS headers --------------------------------------------------
FROM swift:6.1-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libopenblas-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --product gradserve --static-swift-stdlib \
 && mkdir -p /out \
 && cp .build/release/gradserve /out/ \
 && cp -R .build/release/gradserve_GradServer.resources /out/

# --- runtime: slim Debian with the OpenBLAS runtime ----------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libopenblas0-pthread curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data gradserve \
 && mkdir -p /data && chown gradserve /data
COPY --from=build /out/ /usr/local/bin/
USER gradserve
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["gradserve", "serve", "--host", "0.0.0.0", "--port", "8080", "--data-dir", "/data"]
