/**
 * The contract of the link between the connector and an agent (`vmlift agent serve`), used by both
 * `engine/` (the connector's agent hub) and `agent/` (the agent's side). The agent dials out: HTTPS
 * (HTTP/1.1 over TLS with the connector's pinned fingerprint, through the HTTP CONNECT proxy when one
 * is set); every request carries `authorization: Bearer <token>` and `x-vmlift-agent: <agent id>`.
 *
 *   POST /v1/agent/hello     AgentHello                       → HelloAnswer
 *   GET  /v1/agent/commands?wait=SECONDS                      → { commands: AgentCommand[] } (long poll)
 *   POST /v1/agent/progress  AgentProgress                    → {}
 *   POST /v1/agent/result    AgentCycleResult                 → {}
 *
 * The data never goes through the connector: the agent sends it to the receiver itself.
 */
import type { ImageInfo } from '../model/images.ts';
import type { ErrorReport } from '../util/errors.ts';

/** The connector's default port for agents. */
export const AGENT_LINK_PORT = 8091;
/** How long the connector holds a poll open when it has nothing to say (seconds). */
export const AGENT_POLL_SECONDS = 20;
/** Header naming the agent; the token must be this agent's. */
export const AGENT_ID_HEADER = 'x-vmlift-agent';

/** One block device (or disk image file) the agent can read. */
export interface AgentDevice {
  path: string;
  size: number;
  /** `/sys/block/X/device/model` (absent for files, loop devices). */
  model?: string;
  /** `disk`, `loop`, `file`, … */
  type: string;
  /** Mount points of the device and of its partitions. */
  mounts: string[];
  /** The device is in the agent's allow-list (`devices` of agent.json or `--device`). */
  configured: boolean;
}

export interface AgentHello {
  agentId: string;
  hostname: string;
  version: string;
  devices: AgentDevice[];
  /** The devices the agent reads when a job names none. */
  defaultDevices: string[];
  /** Sources the agent holds a receiver credential for (the others need the activation code once). */
  credentials: string[];
}

export interface HelloAnswer { agentId: string; pollSeconds: number }

/** Settings a cycle runs with; `settings` commands change them while it runs. */
export interface AgentCycleSettings {
  compression: number;
  bandwidthMbps: number;
  checksum: boolean;
  maxImages: number;
}

export interface AgentCycleCommand {
  type: 'cycle';
  jobId: string;
  /** The engine's cycle id; the agent resumes its open cycle when it has one. */
  cycleId: string;
  /** Receiver source id of the job. */
  sourceId: string;
  /** Devices to read; empty: the agent's own default devices. */
  devices: string[];
  settings: AgentCycleSettings;
  /** No committed cycle yet: the agent runs its preflight (`vmlift agent check`) first. */
  first: boolean;
  final: boolean;
  /** The receiver as the connector knows it (the agent's own config overrides it). */
  receiver: { address: string; fingerprint: string; dataPort?: number };
  /** The connector's activation code, sent only while the agent holds no credential for the source. */
  activationCode?: string;
}

export interface AgentAbortCommand { type: 'abort'; cycleId: string; reason: string }
export interface AgentSettingsCommand { type: 'settings'; cycleId: string; settings: Partial<AgentCycleSettings> }
export type AgentCommand = AgentCycleCommand | AgentAbortCommand | AgentSettingsCommand;

export interface AgentDiskProgress {
  disk: number;
  label: string;
  done: number;
  total: number;
  changed: number;
  wireBytes: number;
}

export interface AgentProgress {
  cycleId: string;
  step: 'preflight' | 'connect' | 'transfer' | 'commit';
  disks: AgentDiskProgress[];
}

export interface AgentDiskResult {
  disk: number;
  label: string;
  capacity: number;
  readBytes: number;
  changedBytes: number;
  sentBytes: number;
}

export interface AgentCycleResult {
  /** The engine's cycle id of the command. */
  cycleId: string;
  ok: boolean;
  /** ok: the committed image and what the cycle moved. */
  image?: ImageInfo;
  baseImageId?: string | null;
  disks?: AgentDiskResult[];
  wireBytes?: number;
  resentBytes?: number;
  durationMs?: number;
  /** The receiver's images of the source after the cycle (shown by `job show`). */
  images?: ImageInfo[];
  /** Failed: the step and the error with its fix. */
  step?: 'preflight' | 'connect' | 'transfer' | 'commit';
  error?: ErrorReport & { transient?: boolean };
  /** Preflight findings (failed ones and hints). */
  checks?: AgentCheck[];
}

/** One finding of `vmlift agent check`. */
export interface AgentCheck {
  name: string;
  /** fail: blocks a first cycle (unless --ignore-check); warn: a hint for the target; ok. */
  status: 'ok' | 'fail' | 'warn';
  message: string;
  fix?: string;
}
