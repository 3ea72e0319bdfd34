/**
 * `atmirror resolve <did|handle> [--plc URL] [--handle-resolver URL] [--peer MULTIADDR]… [--json]`
 *
 * Prints what a mirror derives from an account's identity: the DID, the handle
 * (and whether it checks out both ways), the PDS, the signing key, the PeerID of
 * that key, the rendezvous CID mirrors announce, and where the document came from.
 * With --peer, a temporary node asks those peers for the DID's verified PLC log when
 * the directory is down (peer-node.ts).
 */
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { peerIdForKey } from '../../src/identity/peer-id.ts'
import { rendezvousCid } from '../../src/identity/rendezvous.ts'
import { defineCommand, expectPositionals, globalOptions } from './context.ts'
import { identityConfig, identityOptions } from './node-options.ts'
import { withPeerNode } from './peer-node.ts'
import type { Identity } from '../../src/identity/resolver.ts'

const USAGE = `usage: atmirror resolve <did|handle> [--plc URL] [--handle-resolver URL] [--peer MULTIADDR]... [--json]
  Resolves a DID (did:plc, did:web) or a handle and prints its handle (verified
  both ways or not), PDS, signing key (did:key), PeerID, rendezvous CID and where
  the DID document came from (the PLC directory or web host; or, those being down,
  the DID's verified PLC log from a peer, or the last did:web document).
  --peer MULTIADDR        a mirror to ask for the DID's PLC log when the directory is
                          down (/ip4/…/tcp/…/p2p/<peer id>), repeatable
  --plc URL               PLC directory (ATMIRROR_PLC; default https://plc.directory)
  --handle-resolver URL   resolve handles with com.atproto.identity.resolveHandle on
                          this service (ATMIRROR_HANDLE_RESOLVER) instead of DNS/HTTPS`

const options = { ...globalOptions, ...identityOptions, peer: { type: 'string', multiple: true } } as const

export const command = defineCommand({
  usage: USAGE,
  options: options,
  async run ({ values, positionals }, ctx) {
    const json = values.json
    const [input] = expectPositionals(positionals, ['DID or handle']) as [string]
    const config = identityConfig(values, ctx.env)
    const peers = values.peer ?? []
    const identity: Identity = peers.length === 0
      ? await new AtprotoIdentityResolver(config).resolve(input, { signal: ctx.signal })
      : await withPeerNode(peers, config, async (node) => await node.identity.resolve(input, { signal: ctx.signal }))
    const peerId = peerIdForKey(identity.signingKey).toString()
    const rendezvous = rendezvousCid(identity.did).toString()
    if (json) {
      ctx.stdout.write(JSON.stringify({
        ok: true,
        did: identity.did,
        handle: identity.handle ?? null,
        handleVerified: identity.handleVerified,
        pds: identity.pds,
        signingKey: identity.didKey,
        keyType: identity.signingKey.type,
        peerId,
        rendezvousCid: rendezvous,
        source: identity.source ?? null,
        handleVerifiedAt: identity.handleVerifiedAt ?? null
      }) + '\n')
      return 0
    }
    const handle = identity.handle === undefined
      ? '(none)'
      : `${identity.handle} (${identity.handleVerified ? 'verified' : 'NOT verified: it does not resolve back to this DID'})`
    const rows: Array<[string, string]> = [
      ['did', identity.did],
      ['handle', handle],
      ['pds', identity.pds],
      ['signing key', `${identity.didKey} (${identity.signingKey.type})`],
      ['peer id', `${peerId} (of the signing key; no node holds it)`],
      ['rendezvous', `${rendezvous} (mirrors announce this CID)`],
      ['source', describeSource(identity.source)]
    ]
    const width = Math.max(...rows.map(([name]) => name.length))
    ctx.stdout.write(rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`).join('\n') + '\n')
    return 0
  }
})

/** Where the DID document came from, in words. */
export function describeSource (source: string | undefined): string {
  if (source === undefined) return '(unknown)'
  if (source === 'stored-log') return 'stored-log (the directory is down: the verified PLC log kept here)'
  if (source.startsWith('peer:')) return `${source} (the directory is down: a peer's PLC log, verified op by op)`
  if (source.startsWith('stored-web:')) return `${source} (the web host is down: the last document fetched, which nothing certifies)`
  return source
}
