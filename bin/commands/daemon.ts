/**
 * `atmirror daemon`: runs the mirror node in the foreground until SIGINT/SIGTERM.
 */
import { once } from 'node:events'
import { DEFAULT_DOWNLOAD_LIMITS } from '../../src/mirror/download-guard.ts'
import { DEFAULT_BLOB_RECHECK, DEFAULT_MAX_BLOB_SIZE } from '../../src/mirror/blobs.ts'
import { createMirrorNode, type MirrorNodeInit } from '../../src/node.ts'
import { DEFAULT_API_PORT, syncResultJson } from '../../src/server/control-api.ts'
import { DEFAULT_HTTP_PORT } from '../../src/server/public-server.ts'
import { UsageError, dataDir, defineCommand, expectPositionals } from './context.ts'
import { applySettings, configPath, readConfig } from './config.ts'
import { daemonOptions, daemonSettings } from './daemon-options.ts'
import { blockstoreFlag, formatSync, identityConfig, integerFlag, sizeFlag } from './node-options.ts'

const USAGE = `usage: atmirror daemon [options]

Runs the node: keeps every pinned repo current (follows each repo's host live over
its firehose, re-checked at start, then every --interval while its host is not
followed, hourly while it is), serves blocks to peers over libp2p/Bitswap, and answers the control
API on 127.0.0.1 (used by 'atmirror status' and 'atmirror pin'). Stops cleanly on
SIGINT/SIGTERM.

options:
  --data DIR              data directory (ATMIRROR_DATA; default ~/.atmirror)
  --blockstore KIND       level (packed; the default) or fs (a file per block) for a
                          new data directory; an existing one keeps the kind it has
  --api PORT              control API port, 0 for any free port (default ${DEFAULT_API_PORT})
  --api-host HOST         control API interface (default 127.0.0.1; anything else
                          exposes the token-protected API beyond this machine)
  --http HOST:PORT        serve what is mirrored over public, read-only HTTP (atproto sync
                          and repo XRPC, /ipfs gateway; no token): PORT alone binds
                          127.0.0.1, [::]:PORT or 0.0.0.0:PORT every interface (default
                          off; the default port is ${DEFAULT_HTTP_PORT})
  --http-trust-proxy      behind a reverse proxy: count requests per client by the last
                          X-Forwarded-For address
  --public-hostname HOST  the host name (and port) relays reach the --http server by
  --request-crawl URL     announce the mirror to this relay (com.atproto.sync.requestCrawl
                          with --public-hostname) at start and every 20 minutes; repeatable
  --interval SECONDS      re-check every pinned repo this often; 0 = only at start (default 60)
  --concurrency N         repos synced at once by the re-check (default 4)
  --max-repo-blocks N     most blocks one sync may download (default 20000000)
  --max-repo-mb N         most MiB one sync may download (default 8192)
  --max-blob-size SIZE    largest blob mirrored, bytes or with K/M/G (default 100M);
                          a larger one is refused and logged
  --no-blobs              mirror no blobs (images, video) of any repo; records still are
  --blob-recheck N        stored blobs per repo asked about at its PDS each hour, to
                          remove those taken down there (default 25; 0: never)
  --private               private network: no public bootstrap, no autoNAT/UPnP, DHT
                          server mode on any address incl. loopback, dials only
                          loopback and the hosts of --listen/--bootstrap/--announce/
                          --peer/--allow-dial (no /dnsaddr)
  --listen MULTIADDR      TCP address to listen on, repeatable
                          (default /ip4/0.0.0.0/tcp/4001; with --private /ip4/127.0.0.1/tcp/0)
  --bootstrap MULTIADDR   peer to connect to and keep connected, repeatable
                          (/ip4/…/tcp/…/p2p/<peer id>)
  --announce MULTIADDR    address to announce instead of the listen addresses, repeatable
                          (public mode: otherwise autoNAT must confirm a public address
                          before the DHT runs in server mode)
  --no-upnp               public mode: do not ask the router (UPnP/NAT-PMP) to forward the port
  --allow-dial IP|CIDR    with --private: a further host or range the node may dial, repeatable
  --peer MULTIADDR        a mirror asked for every pinned repo's head and blocks, besides
                          those the DHT names (/ip4/…/tcp/…[/p2p/<peer id>]), repeatable
  --provide heads|all     what to announce on the DHT per pinned repo: its rendezvous key
                          and commit (heads, default), or also every block (all: costly)
  --relay URL             also follow this relay's firehose (https://… or wss://…), repeatable
  --no-follow             do not follow firehoses; only poll every --interval
  --offline               no peer-to-peer network at all (no libp2p); repos still sync from their PDS
  --plc URL               PLC directory (ATMIRROR_PLC; default https://plc.directory)
  --handle-resolver URL   resolve handles through this XRPC service (ATMIRROR_HANDLE_RESOLVER)
  --config FILE           settings file (ATMIRROR_CONFIG; default <data>/config.json)
  --json                  print the startup info and events as JSON lines, each
                          with "time"

Every option above also comes from ATMIRROR_<OPTION> (e.g. ATMIRROR_LISTEN, comma-
separated for repeatable ones) and from the config file, a JSON object keyed by the
option names ({"private": true, "listen": ["/ip4/0.0.0.0/tcp/4001"]}). A flag wins
over the environment, which wins over the file. See docs/CONFIGURATION.md.`

const options = daemonOptions

export const command = defineCommand({
  usage: USAGE,
  options: options,
  async run ({ values: flags, positionals }, ctx) {
    expectPositionals(positionals, [])
    const json = flags.json
    // flag > environment > config file > default (config.ts)
    const file = configPath(flags.config, ctx.env, dataDir(flags.data, ctx.env))
    const config = await readConfig(file, options)
    const dir = flags.data ?? (ctx.env.ATMIRROR_DATA === '' ? undefined : ctx.env.ATMIRROR_DATA) ?? (file.required && typeof config.data === 'string' ? config.data : undefined)
    const { values } = applySettings(flags, daemonSettings, options, ctx.env, config, file.path)
    const networkFlags = ['listen', 'bootstrap', 'announce', 'allow-dial', 'peer', 'provide'] as const
    if (values.offline) {
      for (const flag of networkFlags) {
        if (values[flag] !== undefined) throw new UsageError(`--${flag} makes no sense with --offline`)
      }
      if (values.private) throw new UsageError('--private makes no sense with --offline')
    }
    if (!values.private && values['allow-dial'] !== undefined) throw new UsageError('--allow-dial only applies with --private')
    if ((values.private || values.offline) && values['no-upnp']) throw new UsageError('--no-upnp only applies to the public network (without --private or --offline)')
    const provide = values.provide ?? 'heads'
    if (provide !== 'heads' && provide !== 'all') throw new UsageError(`--provide must be heads or all, got ${JSON.stringify(provide)}`)

    const init: MirrorNodeInit = {
      dataDir: dataDir(dir, ctx.env),
      blockstore: blockstoreFlag(values.blockstore),
      ...identityConfig(values, ctx.env),
      api: { port: integerFlag('--api', values.api, DEFAULT_API_PORT, { max: 65535 }), host: values['api-host'] },
      http: httpFlag(values.http, values['http-trust-proxy'] === true),
      requestCrawl: requestCrawlFlags(values['request-crawl'], values['public-hostname'], values.http),
      // setTimeout holds at most 2^31-1 ms (about 24.8 days)
      intervalMs: integerFlag('--interval', values.interval, 60, { max: 2_147_483 }) * 1000,
      concurrency: integerFlag('--concurrency', values.concurrency, 4, { min: 1, max: 64 }),
      blobs: values['no-blobs'] === true
        ? false
        : { maxBlobSize: sizeFlag('--max-blob-size', values['max-blob-size'], DEFAULT_MAX_BLOB_SIZE), recheckBlobs: integerFlag('--blob-recheck', values['blob-recheck'], DEFAULT_BLOB_RECHECK, { min: 0, max: 100_000 }) },
      downloadLimits: {
        maxBlocks: integerFlag('--max-repo-blocks', values['max-repo-blocks'], DEFAULT_DOWNLOAD_LIMITS.maxBlocks, { min: 1 }),
        maxBytes: integerFlag('--max-repo-mb', values['max-repo-mb'], DEFAULT_DOWNLOAD_LIMITS.maxBytes / 1024 / 1024, { min: 1 }) * 1024 * 1024
      },
      follow: values['no-follow'] === true ? false : { relays: values.relay ?? [] },
      network: values.offline
        ? false
        : {
            mode: values.private ? 'private' : 'public',
            listen: values.listen,
            bootstrap: values.bootstrap,
            announce: values.announce,
            allowDial: values['allow-dial'],
            upnp: !values['no-upnp'],
            // the node also puts these hosts on the private mode's dial allow-list
            mirrors: { peers: values.peer ?? [] },
            services: { provide }
          }
    }

    if (ctx.signal.aborted) return 130
    const node = await createMirrorNode(init)
    // every line and event carries the time it happened (ISO 8601, UTC)
    const print = (line: string | Record<string, unknown>, out = ctx.stdout): void => {
      const time = new Date().toISOString()
      out.write((json ? JSON.stringify({ time, ...(line as Record<string, unknown>) }) : `${time} ${String(line).replaceAll('\n', `\n${' '.repeat(time.length + 1)}`)}`) + '\n')
    }
    node.events.addEventListener('repo:synced', (evt) => {
      if (json) print({ event: 'repo:synced', ...syncResultJson(evt.detail) })
      else if (evt.detail.rollback !== undefined) print(`warning: ${formatSync(evt.detail)}`, ctx.stderr)
      else if (evt.detail.changed) print(`synced ${formatSync(evt.detail)}`)
    })
    node.events.addEventListener('repo:error', (evt) => {
      const { did, error } = evt.detail
      if (json) print({ event: 'repo:error', did, error: { name: error.name, message: error.message } })
      else print(`sync failed: ${did}: ${error.message} (${error.name})`, ctx.stderr)
    })
    node.events.addEventListener('firehose:event', (evt) => {
      const { host, seq, did, type, rev, outcome, lagMs, error } = evt.detail
      if (json) print({ event: 'firehose:event', host, seq, did, type, rev, outcome, lagMs, ...(error === undefined ? {} : { error: { name: error.name, message: error.message } }) })
      else if (error !== undefined) print(`firehose event refused: ${host} seq ${seq} #${type} ${did}: ${error.message} (${error.name})`, ctx.stderr)
    })
    try {
      await node.start()
      const status = await node.status()
      if (json) {
        print({ event: 'started', pid: status.pid, dataDir: status.dataDir, api: node.api?.url, http: node.http?.url ?? null, peerId: status.peerId, network: status.network, addresses: status.addresses, pins: status.repos.length })
      } else {
        print([
          `atmirror ${status.version} daemon running (pid ${status.pid})`,
          `  data:      ${status.dataDir}`,
          `  api:       ${node.api?.url ?? 'off'}`,
          `  http:      ${node.http?.url ?? 'off'}`,
          `  network:   ${status.network ?? 'offline'}`,
          `  peer id:   ${status.peerId ?? '-'}`,
          ...status.addresses.map((addr, i) => `  ${i === 0 ? 'addresses:' : '          '} ${addr}`),
          `  pinned:    ${status.repos.length} repo${status.repos.length === 1 ? '' : 's'} (re-checked every ${status.intervalSeconds > 0 ? `${status.intervalSeconds} s` : 'start only'})`
        ].join('\n'))
      }
      if (!ctx.signal.aborted) await once(ctx.signal, 'abort')
    } finally {
      await node.stop()
    }
    if (json) print({ event: 'stopped' })
    else print('stopped')
    return 0
  }
})

/** `--request-crawl URL…` with `--public-hostname HOST`: both, and `--http`, or none. */
export function requestCrawlFlags (relays: string[] | undefined, hostname: string | undefined, http: string | undefined): MirrorNodeInit['requestCrawl'] {
  if (relays === undefined || relays.length === 0) {
    if (hostname !== undefined) throw new UsageError('--public-hostname is only used with --request-crawl')
    return undefined
  }
  if (hostname === undefined) throw new UsageError('--request-crawl needs --public-hostname: the host name relays reach this mirror by')
  if (http === undefined || http === 'off') throw new UsageError('--request-crawl needs --http: relays crawl the public HTTP server')
  for (const relay of relays) {
    if (!/^https?:\/\/[^/]/.test(relay)) throw new UsageError(`--request-crawl must be an http(s) URL, got ${JSON.stringify(relay)}`)
  }
  return { relays, hostname }
}

/** `--http`: `HOST:PORT`, `[V6]:PORT`, `PORT` (loopback), `HOST` (default port) or `off`. */
export function httpFlag (value: string | undefined, trustProxy: boolean): MirrorNodeInit['http'] {
  if (value === undefined || value === 'off' || value === '') {
    if (trustProxy) throw new UsageError('--http-trust-proxy needs --http')
    return false
  }
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*))(?::(\d+))?$/.exec(value) ?? /^()()(\d+)$/.exec(value)
  if (match === null) throw new UsageError(`--http must be HOST:PORT, [IPV6]:PORT, PORT or off, got ${JSON.stringify(value)}`)
  const [, v6, name, port] = match
  const portOnly = /^\d+$/.test(value)
  const host = portOnly ? '127.0.0.1' : (v6 ?? name)
  if (host === '') throw new UsageError(`--http needs a host before the port (127.0.0.1:PORT, 0.0.0.0:PORT), got ${JSON.stringify(value)}`)
  return {
    host,
    port: integerFlag('--http port', portOnly ? value : port, DEFAULT_HTTP_PORT, { max: 65535 }),
    trustProxy
  }
}
