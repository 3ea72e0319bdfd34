/**
 * atproto's Merkle Search Tree: key heights, node codec, strict walking,
 * building, diffing, editing and sync 1.1 commit proofs.
 */
export { MAX_KEY_LENGTH, commonPrefixLength, ensureValidMstKey, isValidMstKey, keyHeight, mstKeyProblem } from './key.ts'
export { decodeMstNode, encodeMstNode, type MstEntry, type MstNode } from './node.ts'
export { DEFAULT_MAX_NODE_ENTRIES } from './check.ts'
export { missingMstBlockBatches, missingMstBlocks, walkMst, walkMstBatches, type MissingMstBlocksOptions, type MissingMstNode, type MstLeaf, type WalkMstOptions } from './walk.ts'
export { EMPTY_MST_ROOT, buildMst, type BuiltMst } from './build.ts'
export { diffMst, proofNodesFor, type DiffMstOptions, type MstDiff, type MstRecordOp } from './diff.ts'
export { MstEditor, type MstEditResult, type MstEditorInit } from './mutate.ts'
export { invertCommitOps, normalizeCommitOps, verifyCommitProof, type CommitOp, type CommitProofOptions, type InvertedOps } from './proof.ts'
