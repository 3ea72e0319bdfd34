/**
 * `atmirror mirrors <did|handle>`: who announces the DID on the DHT (the providers
 * of its rendezvous key), plus configured peers. Asks the running daemon when there
 * is one; otherwise starts a short-lived node on the data directory (no control API,
 * no announcements), looks the DID up and stops.
 */
import type { MirrorsResult } from '../../src/mirror/api.ts'
import { openBackend } from './backend.ts'
import { UsageError, defineCommand, globalOptions } from './context.ts'
import { identityOptions, integerFlag } from './node-options.ts'

const USAGE = `usage: atmirror mirrors DID-or-HANDLE [options]

Lists the peers that announce the DID on the DHT (its rendezvous key), with the
addresses the DHT gave for them, plus any --peer. A provider record only says a
peer claims to mirror the repo: whatever is fetched from it is verified.

With a daemon running on the data directory, the daemon looks it up with its own
configuration (--peer, --timeout and the network options are then ignored, with a
warning). Otherwise a temporary node joins the network for the lookup:

options:
  --data DIR              data directory (ATMIRROR_DATA; default ~/.atmirror)
  --private               private network (see 'atmirror daemon --help')
  --bootstrap MULTIADDR   peer to join the DHT through, repeatable
  --listen MULTIADDR      TCP address for the temporary node (default: any free loopback port with --private)
  --peer MULTIADDR        a peer to list as a mirror whatever the DHT says, repeatable
  --timeout SECONDS       time budget of the DHT lookup (default 10)
  --plc URL               PLC directory, to resolve a handle (ATMIRROR_PLC)
  --handle-resolver URL   handle resolution service (ATMIRROR_HANDLE_RESOLVER)
  --json                  print the result as one JSON object`

const options = {
  ...globalOptions,
  ...identityOptions,
  private: { type: 'boolean', default: false },
  bootstrap: { type: 'string', multiple: true },
  listen: { type: 'string', multiple: true },
  peer: { type: 'string', multiple: true },
  timeout: { type: 'string' }
} as const

export const command = defineCommand({
  usage: USAGE,
  options: options,
  async run ({ values, positionals }, ctx) {
    if (positionals.length !== 1) throw new UsageError(`${positionals.length === 0 ? 'missing' : 'one'} DID or handle`)
    const id = positionals[0] as string
    const json = values.json
    const timeoutMs = integerFlag('--timeout', values.timeout, 10, { min: 1, max: 600 }) * 1000
    // GET /v1/mirrors/:did takes no options: the daemon uses its own --peer list and time budget
    const backend = await openBackend(values, ctx, {
      daemonIgnores: ['peer', 'timeout', 'private', 'bootstrap', 'listen'],
      local: {
        network: {
          mode: values.private ? 'private' : 'public',
          listen: values.listen ?? (values.private ? undefined : ['/ip4/127.0.0.1/tcp/0']),
          bootstrap: values.bootstrap ?? [],
          mirrors: { peers: values.peer ?? [], timeoutMs },
          services: { reprovide: false }
        }
      },
      start: true
    })
    try {
      const result = await backend.api.mirrors(id, { signal: ctx.signal })
      ctx.stdout.write((json ? JSON.stringify({ ok: true, ...result }) : formatMirrors(result)) + '\n')
      return 0
    } finally {
      await backend.close()
    }
  }
})

function formatMirrors (result: MirrorsResult): string {
  if (result.mirrors.length === 0) return `no mirrors of ${result.did} found`
  const lines = [`${result.mirrors.length} mirror${result.mirrors.length === 1 ? '' : 's'} of ${result.did}:`]
  for (const mirror of result.mirrors) {
    lines.push(`  ${mirror.peerId}  (${mirror.source})`)
    for (const address of mirror.addresses) lines.push(`      ${address}`)
  }
  return lines.join('\n')
}
