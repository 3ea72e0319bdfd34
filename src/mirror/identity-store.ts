/**
 * The identity records kept with each pinned repo (the `IdentityStore` of
 * src/identity/plc-logs.ts), in the node's datastore as JSON:
 *
 *   /atmirror/identity/plc/<did>      the verified PLC audit log: { did, entries, fetchedAt, source }
 *   /atmirror/identity/web/<did>      the last did:web document fetched: { did, document, fetchedAt, url }
 *   /atmirror/identity/handle/<did>   the last handle verified both ways: { did, handle, verifiedAt }
 *
 * Records are written only for pinned DIDs (a one-shot `resolve` of some other DID
 * leaves nothing behind) and dropped with the pin (`forget`). Reads verify nothing:
 * the keeper verifies a stored log again before it uses it.
 */
import type { IdentityStore, StoredHandle, StoredPlcLog, StoredWebDocument } from '../identity/plc-logs.ts'

/** The part of LevelDB the records need (MirrorStore's `datastore.db` fits). */
export interface IdentityDb {
  get: (key: string) => Promise<Uint8Array | undefined>
  put: (key: string, value: Uint8Array) => Promise<void>
  del: (key: string) => Promise<void>
}

const KEYS = {
  plc: (did: string) => `/atmirror/identity/plc/${did}`,
  web: (did: string) => `/atmirror/identity/web/${did}`,
  handle: (did: string) => `/atmirror/identity/handle/${did}`
}

const utf8 = new TextEncoder()
const fromUtf8 = new TextDecoder()

/** {@link IdentityStore} on the node's datastore, for pinned DIDs. */
export class MirrorIdentityStore implements IdentityStore {
  readonly #db: IdentityDb
  readonly #pinned: (did: string) => Promise<boolean>

  constructor (components: { db: IdentityDb, pins: { has: (did: string) => Promise<boolean> } }) {
    this.#db = components.db
    this.#pinned = async (did) => await components.pins.has(did)
  }

  async getPlcLog (did: string): Promise<StoredPlcLog | undefined> {
    return await this.#get<StoredPlcLog>(KEYS.plc(did))
  }

  async putPlcLog (record: StoredPlcLog): Promise<void> {
    await this.#put(record.did, KEYS.plc(record.did), record)
  }

  async getWebDocument (did: string): Promise<StoredWebDocument | undefined> {
    return await this.#get<StoredWebDocument>(KEYS.web(did))
  }

  async putWebDocument (record: StoredWebDocument): Promise<void> {
    await this.#put(record.did, KEYS.web(record.did), record)
  }

  async getHandle (did: string): Promise<StoredHandle | undefined> {
    return await this.#get<StoredHandle>(KEYS.handle(did))
  }

  async putHandle (record: StoredHandle): Promise<void> {
    await this.#put(record.did, KEYS.handle(record.did), record)
  }

  /** Drops every record of `did` (on unpin). */
  async forget (did: string): Promise<void> {
    for (const key of [KEYS.plc(did), KEYS.web(did), KEYS.handle(did)]) await this.#db.del(key)
  }

  async #get<T> (key: string): Promise<T | undefined> {
    const bytes = await this.#db.get(key)
    return bytes === undefined ? undefined : JSON.parse(fromUtf8.decode(bytes)) as T
  }

  async #put (did: string, key: string, record: unknown): Promise<void> {
    if (!await this.#pinned(did)) return
    await this.#db.put(key, utf8.encode(JSON.stringify(record)))
  }
}
