/**
 * `atmirror head <did|handle> [--plc URL] [--handle-resolver URL] [--peer MULTIADDR]… [--timeout MS] [--json]`
 *
 * Fetches the repo's latest commit from its PDS and verifies it (hash, DID,
 * signature against the DID's current key) before printing it. With --peer, a
 * temporary node asks those peers too (head exchange, and the DID's PLC log when the
 * directory is down): the PDS's verified answer first, the peers' when it fails.
 */
import { PdsHeadResolver } from '../../src/head/pds-head-resolver.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { defineCommand, expectPositionals, globalOptions } from './context.ts'
import { identityConfig, identityOptions, integerFlag } from './node-options.ts'
import { withPeerNode } from './peer-node.ts'
import { describeSource } from './resolve.ts'
import type { Head } from '../../src/head/head-resolver.ts'

const USAGE = `usage: atmirror head <did|handle> [--plc URL] [--handle-resolver URL] [--timeout MS] [--json]
  Fetches the repo's latest signed commit from its PDS, verifies it and prints its
  CID, rev, data (MST root) and source.
  --plc URL               PLC directory (ATMIRROR_PLC; default https://plc.directory)
  --handle-resolver URL   resolve handles through this service (ATMIRROR_HANDLE_RESOLVER)
  --peer MULTIADDR        a mirror to ask too (/ip4/…/tcp/…/p2p/<peer id>), repeatable
  --timeout MS            time budget of each request (default 10000)`

const options = { ...globalOptions, ...identityOptions, timeout: { type: 'string' }, peer: { type: 'string', multiple: true } } as const

export const command = defineCommand({
  usage: USAGE,
  options: options,
  async run ({ values, positionals }, ctx) {
    const json = values.json
    const [input] = expectPositionals(positionals, ['DID or handle']) as [string]
    const timeoutMs = integerFlag('--timeout', values.timeout, 10_000, { min: 1 })
    const peers = values.peer ?? []
    let head: Head
    if (peers.length === 0) {
      const identity = new AtprotoIdentityResolver({ ...identityConfig(values, ctx.env), timeoutMs })
      const did = input.startsWith('did:') ? input : (await identity.resolve(input, { signal: ctx.signal })).did
      head = await new PdsHeadResolver({ identity }, { timeoutMs }).resolveHead(did, { signal: ctx.signal })
    } else {
      head = await withPeerNode(peers, identityConfig(values, ctx.env), async (node) => {
        const did = input.startsWith('did:') ? input : (await node.identity.resolve(input, { signal: ctx.signal })).did
        return await node.heads.resolveHead(did, { signal: ctx.signal })
      })
    }
    if (json) {
      ctx.stdout.write(JSON.stringify({ ok: true, did: head.did, cid: head.cid.toString(), rev: head.rev, data: head.data.toString(), source: head.source, identitySource: head.identity.source ?? null }) + '\n')
      return 0
    }
    const rows: Array<[string, string]> = [
      ['did', head.did],
      ['commit', head.cid.toString()],
      ['rev', head.rev],
      ['data', `${head.data.toString()} (MST root)`],
      ['source', `${head.source} (signature verified)`],
      ['identity', describeSource(head.identity.source)]
    ]
    const width = Math.max(...rows.map(([name]) => name.length))
    ctx.stdout.write(rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`).join('\n') + '\n')
    return 0
  }
})
