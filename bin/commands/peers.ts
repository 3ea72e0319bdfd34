/**
 * `atmirror peers [--json]`: the running daemon's connected peers, through its
 * control API (GET /v1/peers).
 */
import { ControlApiError } from '../../src/errors.ts'
import { ControlClient } from '../../src/server/control-client.ts'
import type { PeersResult } from '../../src/server/control-api.ts'
import { CommandUsageError, dataDir, globalOptions, parse, type Command } from './context.ts'

const USAGE = `usage: atmirror peers [--data DIR] [--json]

Lists the peers the running daemon holds connections to: peer id, remote address
and direction. Needs a daemon on the data directory ('atmirror daemon').`

export const command: Command = {
  async run (args, ctx) {
    const { values, positionals } = parse(args, globalOptions, { allowPositionals: false })
    if (values.help) {
      ctx.stdout.write(USAGE + '\n')
      return 0
    }
    if (positionals.length > 0) throw new CommandUsageError(`unexpected arguments: ${positionals.join(' ')}\n${USAGE}`)
    const json = values.json
    try {
      const dir = dataDir(values.data, ctx.env)
      const found = await ControlClient.forDataDir(dir)
      if (found === undefined) throw new ControlApiError(`no daemon is running on ${dir} (start one with 'atmirror daemon')`)
      const result = await found.client.peers({ signal: ctx.signal })
      ctx.stdout.write((json ? JSON.stringify({ ok: true, ...result }) : formatPeers(result)) + '\n')
      return 0
    } catch (err) {
      return ctx.fail(err, { json })
    }
  }
}

function formatPeers (result: PeersResult): string {
  if (result.peerId === null) return 'the daemon runs without the peer-to-peer network (--offline)'
  const lines = [`${result.peers.length} peer${result.peers.length === 1 ? '' : 's'} connected to ${result.peerId}`]
  for (const peer of result.peers) {
    peer.addresses.forEach((address, i) => {
      lines.push(`  ${i === 0 ? peer.peerId : ' '.repeat(peer.peerId.length)}  ${address}  (${peer.directions[i] ?? '?'})`)
    })
  }
  return lines.join('\n')
}
