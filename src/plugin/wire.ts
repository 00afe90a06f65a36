// Starting the Docker volume plugin inside the agent, from the agent's parts.
import type { Etcd3 } from 'etcd3';
import type { NodeRecord } from '../core/types';
import { listNodes } from '../store/nodes';
import { findProfile, getVolume, listVolumes, updateVolume } from '../store/volumes';
import { errorMessage } from '../util/errors';
import type { Logger } from '../util/log';
import type { VolumeHost } from '../volumes/host';
import { createVolume, removeVolume, type LifecycleDeps } from '../volumes/lifecycle';
import { VolumePlugin } from './plugin';

export interface PluginAgentParts {
  etcd: Etcd3;
  lifecycle: LifecycleDeps;
  host: VolumeHost;
  self: () => NodeRecord;
  /** The unix socket dockerd finds the plugin by, e.g. /run/docker/plugins/cio.sock. */
  socketPath: string;
  /** Volumes are mounted at mountRoot/NAME. */
  mountRoot: string;
  /** Per-node plugin state, e.g. DATADIR/plugin. */
  workDir: string;
  logger: Logger;
}

/**
 * Start the plugin. A plugin that cannot start is logged and left out rather
 * than failing the agent: the node still serves its copies and the API.
 */
export async function startPlugin(parts: PluginAgentParts): Promise<VolumePlugin | undefined> {
  const { etcd } = parts;
  const plugin = new VolumePlugin({
    host: parts.host,
    volumes: {
      get: (name) => getVolume(etcd, name),
      list: () => listVolumes(etcd),
      create: (req) => createVolume(parts.lifecycle, req),
      remove: (name) => removeVolume(parts.lifecycle, name),
      findProfile: (name) => findProfile(etcd, name),
      nodeName: async (id) => (await listNodes(etcd)).find((n) => n.id === id)?.name,
      recordMount: async (name, method, mountpoint) => {
        const self = parts.self().id;
        await updateVolume(etcd, name, (cur) =>
          cur.owner === self && cur.attachment ? { ...cur, attachment: { ...cur.attachment, method, mountpoint } } : undefined,
        );
      },
    },
    selfId: () => parts.self().id,
    socketPath: parts.socketPath,
    mountRoot: parts.mountRoot,
    workDir: parts.workDir,
    logger: parts.logger,
  });
  try {
    await plugin.start();
    return plugin;
  } catch (err) {
    parts.logger.error({ err: errorMessage(err), socket: parts.socketPath }, 'docker volume plugin not started');
    await plugin.stop().catch(() => undefined);
    return undefined;
  }
}
