/**
 * `atmirror head <did|handle> [--plc URL] [--handle-resolver URL] [--timeout MS] [--json]`
 *
 * Fetches the repo's latest commit from its PDS and verifies it (hash, DID,
 * signature against the DID's current key) before printing it.
 */
import { PdsHeadResolver } from '../../src/head/pds-head-resolver.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { defineCommand, expectPositionals, globalOptions } from './context.ts'
import { identityConfig, identityOptions, integerFlag } from './node-options.ts'

const USAGE = `usage: atmirror head <did|handle> [--plc URL] [--handle-resolver URL] [--timeout MS] [--json]
  Fetches the repo's latest signed commit from its PDS, verifies it and prints its
  CID, rev, data (MST root) and source.
  --plc URL               PLC directory (ATMIRROR_PLC; default https://plc.directory)
  --handle-resolver URL   resolve handles through this service (ATMIRROR_HANDLE_RESOLVER)
  --timeout MS            time budget of each request (default 10000)`

const options = { ...globalOptions, ...identityOptions, timeout: { type: 'string' } } as const

export const command = defineCommand({
  usage: USAGE,
  options: options,
  async run ({ values, positionals }, ctx) {
    const json = values.json
    const [input] = expectPositionals(positionals, ['DID or handle']) as [string]
    const timeoutMs = integerFlag('--timeout', values.timeout, 10_000, { min: 1 })
    const identity = new AtprotoIdentityResolver({ ...identityConfig(values, ctx.env), timeoutMs })
    const did = input.startsWith('did:') ? input : (await identity.resolve(input, { signal: ctx.signal })).did
    const head = await new PdsHeadResolver({ identity }, { timeoutMs }).resolveHead(did, { signal: ctx.signal })
    if (json) {
      ctx.stdout.write(JSON.stringify({ ok: true, did: head.did, cid: head.cid.toString(), rev: head.rev, data: head.data.toString(), source: head.source }) + '\n')
      return 0
    }
    const rows: Array<[string, string]> = [
      ['did', head.did],
      ['commit', head.cid.toString()],
      ['rev', head.rev],
      ['data', `${head.data.toString()} (MST root)`],
      ['source', `${head.source} (signature verified)`]
    ]
    const width = Math.max(...rows.map(([name]) => name.length))
    ctx.stdout.write(rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`).join('\n') + '\n')
    return 0
  }
})
