/**
 * `<dataDir>/daemon.json`: how the CLI finds a running daemon. Written by the node
 * when its control API is up, removed when it stops. A file whose pid is gone was
 * left by a killed daemon and is ignored.
 */
import { readFile, rename, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { isHolderAlive, lockPath, readHolder } from '../mirror/lock.ts'

export interface DaemonInfo {
  pid: number
  /** Control API base URL, e.g. `http://127.0.0.1:5176`. */
  api: string
  /** Null when the node runs without the peer-to-peer network. */
  peerId: string | null
  addresses: string[]
  network: string | null
  dataDir: string
  startedAt: string
  version: string
}

export function daemonInfoPath (dataDir: string): string {
  return join(dataDir, 'daemon.json')
}

/** Writes daemon.json atomically (temp file + rename). */
export async function writeDaemonInfo (dataDir: string, info: DaemonInfo): Promise<void> {
  const path = daemonInfoPath(dataDir)
  const tmp = `${path}.${process.pid}.tmp`
  await writeFile(tmp, JSON.stringify(info, null, 2) + '\n', { mode: 0o644 })
  await rename(tmp, path)
}

/** Removes daemon.json if it still names this process. */
export async function removeDaemonInfo (dataDir: string, pid = process.pid): Promise<void> {
  const info = await readDaemonInfo(dataDir)
  if (info?.pid !== pid) return
  await unlink(daemonInfoPath(dataDir)).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err
  })
}

/** Reads daemon.json; undefined when absent or unreadable. Does not check the pid. */
export async function readDaemonInfo (dataDir: string): Promise<DaemonInfo | undefined> {
  let text: string
  try {
    text = await readFile(daemonInfoPath(dataDir), 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  try {
    const info = JSON.parse(text) as DaemonInfo
    if (typeof info.pid !== 'number' || typeof info.api !== 'string') return undefined
    return info
  } catch {
    return undefined
  }
}

/**
 * daemon.json of a daemon that is running now; undefined otherwise. Running means the
 * data-directory lock is held, alive, by the pid daemon.json names (a pid alone could
 * have been reused since a crash).
 */
export async function findRunningDaemon (dataDir: string): Promise<DaemonInfo | undefined> {
  const info = await readDaemonInfo(dataDir)
  if (info === undefined) return undefined
  const holder = await readHolder(lockPath(dataDir))
  if (holder === undefined || holder.pid !== info.pid) return undefined
  return await isHolderAlive(holder) ? info : undefined
}
