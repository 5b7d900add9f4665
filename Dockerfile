# The session-proxy image: the `dist` binary, statically linked, on an empty base.
#
#   docker build -t session-proxy .                  # podman: podman build --format docker ...
#   docker build -t session-proxy-counter --target counter .   # compose.yaml's example app
#   docker compose up                                # proxy, example app and Redis
#
# `build` compiles with the `dist` profile (fat LTO: it takes a while), the example app from its
# own package (examples/counter), so the test suite's dev-dependencies are not built. The image, the last
# stage, holds only the stripped binary, the CA certificates (for rediss://), /etc/passwd naming
# the unprivileged user it runs as, its configuration (deploy/container/proxy.toml) and
# /var/lib/session-proxy, the one directory it writes (the default sqlite store; a volume).
# tests/it/container.rs builds the `counter` and the last stage as written here, with its own
# static build in place of /out/, /state/ and /app/ (no base image can be pulled on the test machine):
# keep what `build` leaves there and those two stages in step.

ARG RUST_IMAGE=docker.io/library/rust:1-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# crt-static links glibc in, so the image needs no libc; SQLite (rusqlite's `bundled`) and ring
# are compiled in anyway. Names (an upstream or Redis by name) resolve without NSS modules in
# the image: glibc 2.34 and later has `files` and `dns` built in (the test resolves its `app`
# from /etc/hosts; DNS is not tried there).
RUN target="$(uname -m)-unknown-linux-gnu" \
 && RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --profile dist \
      --target "$target" -p session-proxy -p counter --bin session-proxy --bin counter \
 && mkdir -p /out/etc/ssl/certs /out/etc/session-proxy /state /app \
 && strip -o /out/session-proxy "target/$target/dist/session-proxy" \
 && strip -o /app/counter "target/$target/dist/counter" \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ \
 && cp deploy/container/proxy.toml /out/etc/session-proxy/ \
 && cp deploy/container/passwd deploy/container/group /out/etc/

# examples/counter.rs alone (`--app-only`), for compose.yaml: no session code, on port 3000.
FROM scratch AS counter
COPY --from=build /app/counter /counter
USER 65534:65534
EXPOSE 3000
ENTRYPOINT ["/counter", "--app-only", "0.0.0.0:3000"]

FROM scratch
COPY --from=build /out/ /
# Created by this COPY, so owned by the image's user: the one directory it may write.
COPY --from=build --chown=10001:10001 /state/ /var/lib/session-proxy/
USER 10001:10001
WORKDIR /var/lib/session-proxy
VOLUME ["/var/lib/session-proxy"]
# The public listener; the image's admin listener is on loopback only (see proxy.toml there).
EXPOSE 8080
# `health` asks the admin listener's /healthz (the configuration names it); the image has no
# curl. Turn it off (`--no-healthcheck`, compose `healthcheck: disable: true`) if you turn the
# admin listener off.
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
  CMD ["/session-proxy", "--config", "/etc/session-proxy/proxy.toml", "health"]
# SIGTERM (docker stop, Kubernetes) drains for shutdown_timeout; SIGHUP reloads.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/session-proxy", "--config", "/etc/session-proxy/proxy.toml"]
CMD ["run"]
