# syntax=docker/dockerfile:1
# Drawbridge container image. Multi-stage: compile TypeScript with the dev dependencies, then
# ship only dist/, config/, static/ and the production dependencies on a slim Node LTS runtime.
#   docker build -t drawbridge .
#   docker run --read-only -p 443:8443 -v $PWD/certs:/etc/drawbridge/tls:ro \
#     -e DRAWBRIDGE_UPSTREAM_BROKERS=broker:1883 drawbridge

ARG NODE_IMAGE=node:22-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm ci --ignore-scripts --no-audit --no-fund && npm run build

FROM ${NODE_IMAGE} AS production-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

FROM ${NODE_IMAGE}
WORKDIR /app
# The production profile: no embedded broker, TLS on. Certificates come from a mounted
# directory (a Kubernetes Secret, a compose volume), watched for rotation.
ENV NODE_ENV=production \
    DRAWBRIDGE_LISTEN_HOST=0.0.0.0 \
    DRAWBRIDGE_LISTEN_PORT=8443 \
    DRAWBRIDGE_TLS_ENABLED=true \
    DRAWBRIDGE_TLS_CERT=/etc/drawbridge/tls/tls.crt \
    DRAWBRIDGE_TLS_KEY=/etc/drawbridge/tls/tls.key \
    DRAWBRIDGE_ADMIN_HOST=0.0.0.0 \
    DRAWBRIDGE_ADMIN_PORT=9464
COPY --from=production-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY config ./config
# The diagnostics page (http.diagnostics), read from static/ beside dist/.
COPY static ./static
# Nothing is written at run time (logs go to stdout), so the root filesystem can be read-only.
USER node
EXPOSE 8443 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.DRAWBRIDGE_ADMIN_PORT || 9464) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/cli.js"]
