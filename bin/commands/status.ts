/**
 * `atmirror status [--json]`: asks the running daemon (through its control API) for
 * its peer id, addresses and pinned repos.
 */
import type { NodeStatus, PinnedRepo } from '../../src/mirror/api.ts'
import { openBackend } from './backend.ts'
import { defineCommand, expectPositionals, globalOptions } from './context.ts'
import { formatBytes } from './node-options.ts'

const USAGE = `usage: atmirror status [--data DIR] [--json]

Shows the running daemon's peer id, network addresses and every pinned repo with
its rev, last sync and state. Needs a daemon on the data directory ('atmirror daemon').`

export const command = defineCommand({
  usage: USAGE,
  options: globalOptions,
  async run ({ values, positionals }, ctx) {
    expectPositionals(positionals, [])
    const json = values.json
    const { api, daemon } = await openBackend(values, ctx, { daemonOnly: true })
    const status = await api.status({ signal: ctx.signal })
    const url = daemon?.api ?? ''
    if (json) {
      ctx.stdout.write(JSON.stringify({ ok: true, api: url, ...status }) + '\n')
    } else {
      ctx.stdout.write(formatStatus(status, url) + '\n')
    }
    return 0
  }
})

function formatStatus (status: NodeStatus, api: string): string {
  const lines = [
    `daemon:    running (pid ${status.pid}, atmirror ${status.version}, since ${status.startedAt})`,
    `data:      ${status.dataDir}`,
    `api:       ${api}`,
    `network:   ${status.network ?? 'offline'}${status.network === null ? '' : ` (${status.peers} peer${status.peers === 1 ? '' : 's'} connected)`}`,
    `peer id:   ${status.peerId ?? '-'}`
  ]
  // a daemon of an older version does not say
  if (status.http !== undefined && status.http !== null) lines.push(`http:      ${status.http}`)
  if (status.metrics !== undefined && status.metrics !== null) lines.push(`metrics:   ${status.metrics}`)
  status.addresses.forEach((addr, i) => lines.push(`${i === 0 ? 'addresses:' : '          '} ${addr}`))
  const subs = status.subscriptions ?? []
  lines.push(`following: ${subs.length === 0 ? 'no firehose' : `${subs.length} firehose${subs.length === 1 ? '' : 's'}`}`)
  for (const sub of subs) {
    const parts = [`  ${sub.host}${sub.relay ? ' (relay)' : ''}`, `state=${sub.state}`, `cursor=${sub.cursor ?? '-'}`, `lag=${sub.lagMs === undefined ? '-' : `${sub.lagMs} ms`}`, `last=${sub.lastEventAt ?? 'never'}`]
    if (sub.error !== undefined && sub.state !== 'connected') parts.push(`error=${JSON.stringify(sub.error)}`)
    lines.push(parts.join('  '))
  }
  for (const crawl of status.crawlRequests ?? []) {
    lines.push(`relay:     ${crawl.relay}  ${crawl.ok ? 'asked to crawl' : `requestCrawl failed: ${crawl.error ?? 'unknown'}`}  at=${crawl.at}`)
  }
  lines.push(`pinned:    ${status.repos.length} repo${status.repos.length === 1 ? '' : 's'}${status.intervalSeconds > 0 ? `, re-checked every ${status.intervalSeconds} s` : ''}`)
  for (const repo of status.repos) lines.push(`  ${formatRepo(repo)}`)
  return lines.join('\n')
}

/** `did handle rev=… state synced=… [error]` */
export function formatRepo (repo: PinnedRepo): string {
  const parts = [repo.did]
  if (repo.handle !== undefined) parts.push(repo.handle)
  parts.push(`rev=${repo.rev ?? '-'}`, `state=${repo.syncing ? `${repo.status}+syncing` : repo.status}`, `synced=${repo.syncedAt ?? 'never'}`)
  if (repo.blobs !== undefined && repo.blobs.referenced > 0) parts.push(`blobs=${repo.blobs.stored}/${repo.blobs.referenced} (${formatBytes(repo.blobs.bytes)})`)
  if (repo.lastEventAt !== undefined) parts.push(`event=${repo.lastEventAt}`)
  if (repo.error !== undefined) parts.push(`error=${JSON.stringify(repo.error)}`)
  return parts.join('  ')
}
