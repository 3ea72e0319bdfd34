/**
 * The account-status policy: the one place that says, for each status a repo's host
 * can give it, what the mirror does with the repo. Every path asks it: the syncer
 * (which status an error stands for, whether the blocks stay), the store and GC
 * (which states hold blocks), export, and the network (Bitswap serving, head
 * exchange, DHT announcements; later HTTP serving).
 *
 * | status      | blocks kept | served to peers | export |
 * | ----------- | ----------- | --------------- | ------ |
 * | active      | yes         | yes             | yes    |
 * | deactivated | yes         | no              | yes    |
 * | suspended   | yes         | no              | yes    |
 * | takendown   | no          | no              | no     |
 * | deleted     | no          | no              | no     |
 *
 * Why: a takedown or deletion is honoured by deleting the blocks; suspended and
 * deactivated accounts may come back and nothing was withdrawn, so the blocks stay
 * but are not redistributed while the account is not active
 * (atproto.com/specs/account). The operator's own export reads what is stored.
 * Syncing is the same for every status: the pin stays and re-checks go on, so a
 * repo that comes back is mirrored again (in full once its blocks are gone). A status this version does
 * not know (a newer protocol's) keeps the blocks and serves nothing, the cautious
 * middle.
 *
 * Statuses come only from the repo's host (directly, or among the reasons of a
 * composite head resolver): peers know heads, not account standing. A DID the
 * directory does not know (404) proves nothing (a mistyped directory answers it
 * for every DID), so only a tombstone (410) means deleted.
 */
import {
  DidNotFoundError,
  HeadUnavailableError,
  RepoDeactivatedError,
  RepoNotFoundError,
  RepoSuspendedError,
  RepoTakendownError
} from '../errors.ts'

/** What a repo's host says about the account, as stored in `RepoState.status`. */
export type RepoStatus = 'active' | 'takendown' | 'suspended' | 'deactivated' | 'deleted'

/** Every status, for tables and tests. */
export const REPO_STATUSES: readonly RepoStatus[] = ['active', 'deactivated', 'suspended', 'takendown', 'deleted']

/** What the mirror may do with a repo in one status. */
export interface StatusRules {
  /** Its blocks stay stored and held; false: they are released and collected. */
  store: boolean
  /** Its blocks, head and DHT announcements go to peers (Bitswap, head exchange, DHT, later HTTP). */
  serve: boolean
  /** `export` writes the stored repo as a CAR. */
  export: boolean
}

const RULES: Record<RepoStatus, StatusRules> = {
  active: { store: true, serve: true, export: true },
  deactivated: { store: true, serve: false, export: true },
  suspended: { store: true, serve: false, export: true },
  takendown: { store: false, serve: false, export: false },
  deleted: { store: false, serve: false, export: false }
}

/** A status this version does not know: keep, serve nothing. */
const UNKNOWN: StatusRules = { store: true, serve: false, export: true }

/** The rules for `status` (a stored string: unknown statuses get the cautious rules). */
export function statusRules (status: string): StatusRules {
  return Object.hasOwn(RULES, status) ? RULES[status as RepoStatus] : UNKNOWN
}

/** Whether a stored state's blocks are stored and held (false with no state). */
export function holdsBlocks<S extends { status: string }> (state: S | undefined): state is S {
  return state !== undefined && statusRules(state.status).store
}

/** Whether a stored repo is handed to peers (Bitswap, head exchange, DHT announcements). */
export function isServable<S extends { status: string }> (state: S | undefined): state is S {
  return state !== undefined && statusRules(state.status).serve
}

/** Whether `export` may write the stored repo. */
export function isExportable<S extends { status: string }> (state: S | undefined): state is S {
  return state !== undefined && statusRules(state.status).export
}

/** The severity order when several sources give a status: the most withdrawn wins. */
const SEVERITY: RepoStatus[] = ['takendown', 'deleted', 'suspended', 'deactivated']

/** The status a head-resolution (or download) error stands for, or undefined for transient failures. */
export function statusOf (err: unknown): RepoStatus | undefined {
  if (err instanceof RepoTakendownError) return 'takendown'
  if (err instanceof RepoSuspendedError) return 'suspended'
  if (err instanceof RepoDeactivatedError) return 'deactivated'
  if (err instanceof RepoNotFoundError) return 'deleted'
  if (err instanceof DidNotFoundError) return err.tombstoned ? 'deleted' : undefined
  if (err instanceof HeadUnavailableError) {
    const statuses = err.errors.map(({ error }) => statusOf(error)).filter(s => s !== undefined)
    for (const status of SEVERITY) if (statuses.includes(status)) return status
  }
  return undefined
}
