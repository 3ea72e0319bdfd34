/**
 * `atmirror peers [--json]`: the running daemon's connected peers, through its
 * control API (GET /v1/peers).
 */
import type { PeersResult } from '../../src/mirror/api.ts'
import { openBackend } from './backend.ts'
import { defineCommand, expectPositionals, globalOptions } from './context.ts'

const USAGE = `usage: atmirror peers [--data DIR] [--json]

Lists the peers the running daemon holds connections to: peer id, remote address
and direction. Needs a daemon on the data directory ('atmirror daemon').`

export const command = defineCommand({
  usage: USAGE,
  options: globalOptions,
  async run ({ values, positionals }, ctx) {
    expectPositionals(positionals, [])
    const json = values.json
    const { api } = await openBackend(values, ctx, { daemonOnly: true })
    const result = await api.peers({ signal: ctx.signal })
    ctx.stdout.write((json ? JSON.stringify({ ok: true, ...result }) : formatPeers(result)) + '\n')
    return 0
  }
})

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
