/**
 * `atmirror resolve <did|handle> [--plc URL] [--handle-resolver URL] [--json]`
 *
 * Prints what a mirror derives from an account's identity: the DID, the handle
 * (and whether it checks out both ways), the PDS, the signing key, the PeerID of
 * that key and the rendezvous CID mirrors announce.
 */
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { peerIdForKey } from '../../src/identity/peer-id.ts'
import { rendezvousCid } from '../../src/identity/rendezvous.ts'
import { defineCommand, expectPositionals, globalOptions } from './context.ts'
import { identityConfig, identityOptions } from './node-options.ts'

const USAGE = `usage: atmirror resolve <did|handle> [--plc URL] [--handle-resolver URL] [--json]
  Resolves a DID (did:plc, did:web) or a handle and prints its handle (verified
  both ways or not), PDS, signing key (did:key), PeerID and rendezvous CID.
  --plc URL               PLC directory (ATMIRROR_PLC; default https://plc.directory)
  --handle-resolver URL   resolve handles with com.atproto.identity.resolveHandle on
                          this service (ATMIRROR_HANDLE_RESOLVER) instead of DNS/HTTPS`

const options = { ...globalOptions, ...identityOptions } as const

export const command = defineCommand({
  usage: USAGE,
  options: options,
  async run ({ values, positionals }, ctx) {
    const json = values.json
    const [input] = expectPositionals(positionals, ['DID or handle']) as [string]
    const resolver = new AtprotoIdentityResolver(identityConfig(values, ctx.env))
    const identity = await resolver.resolve(input, { signal: ctx.signal })
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
        rendezvousCid: rendezvous
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
      ['rendezvous', `${rendezvous} (mirrors announce this CID)`]
    ]
    const width = Math.max(...rows.map(([name]) => name.length))
    ctx.stdout.write(rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`).join('\n') + '\n')
    return 0
  }
})
