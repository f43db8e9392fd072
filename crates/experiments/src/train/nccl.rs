//! [`Collective`] over NCCL for data-parallel training on GPUs (cargo feature `nccl`), through
//! `cudarc`'s NCCL bindings. Processes are started by `mpirun` as with [`super::mpi`]; MPI hands
//! the NCCL unique id from rank 0 to the others (NCCL's `ncclGetUniqueId` + `ncclCommInitRank`
//! protocol) and the collectives themselves run over NCCL. Rank `r` uses GPU `r mod (GPUs on the
//! node)` unless `--device cuda:N` style ordinals are passed to [`NcclCollective::init`].
//!
//! The fused gradient buffer lives on the host ([`Fused`]), so each collective copies it to the
//! GPU, reduces there and copies it back: one host–device round trip per step on top of NCCL's
//! ring, the same buffer MPI would send. NCCL and the CUDA driver are loaded at run time
//! (`dynamic-loading`), so this file compiles on machines without CUDA; it has **not been run**
//! (no GPU was available where it was written): docs/CLUSTER.md says so.

use super::distributed::{Collective, Fused};
use super::mpi::MpiCollective;
use anyhow::{anyhow, Result};
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};
use std::sync::Arc;

/// NCCL communicator of this rank, with the MPI world that started it.
pub struct NcclCollective {
    mpi: MpiCollective,
    stream: Arc<CudaStream>,
    comm: Comm,
}

impl NcclCollective {
    /// Initialises MPI, picks GPU `ordinal` (default: the rank modulo the GPUs on this node),
    /// and builds the NCCL communicator of all ranks.
    pub fn init(ordinal: Option<usize>) -> Result<NcclCollective> {
        let mpi = MpiCollective::init()?;
        let (rank, size) = (mpi.rank(), mpi.size());
        let gpus = CudaContext::device_count().map_err(|e| anyhow!("CUDA driver: {e:?}"))?;
        if gpus < 1 {
            return Err(anyhow!("rank {rank}: no CUDA device found for NCCL"));
        }
        let ordinal = ordinal.unwrap_or(rank % gpus as usize);
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("rank {rank}: CUDA device {ordinal}: {e:?}"))?;
        let stream = ctx.default_stream();
        // Rank 0 draws the id; MPI broadcasts its 128 bytes.
        let mut id = [0 as std::ffi::c_char; 128];
        if rank == 0 {
            id = *Id::new().map_err(|e| anyhow!("ncclGetUniqueId: {e:?}"))?.internal();
        }
        mpi.broadcast_bytes(&mut id, 0)?;
        let comm = Comm::from_rank(stream.clone(), rank, size, Id::uninit(id))
            .map_err(|e| anyhow!("rank {rank}: ncclCommInitRank: {e:?}"))?;
        Ok(NcclCollective { mpi, stream, comm })
    }

    fn round_trip<T>(
        &self,
        v: &mut [T],
        op: impl FnOnce(&Comm, &mut cudarc::driver::CudaSlice<T>) -> Result<()>,
    ) -> Result<()>
    where
        T: cudarc::driver::DeviceRepr + cudarc::nccl::NcclType,
    {
        let mut dev = self.stream.clone_htod(&*v).map_err(|e| anyhow!("copy to the GPU: {e:?}"))?;
        op(&self.comm, &mut dev)?;
        self.stream.memcpy_dtoh(&dev, v).map_err(|e| anyhow!("copy from the GPU: {e:?}"))?;
        self.stream.synchronize().map_err(|e| anyhow!("CUDA stream: {e:?}"))?;
        Ok(())
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn size(&self) -> usize {
        self.mpi.size()
    }
    fn all_reduce_sum(&self, buf: &mut Fused) -> Result<()> {
        match buf {
            Fused::F32(v) => self.round_trip(v, |c: &Comm, d: &mut _| {
                c.all_reduce_in_place(d, &ReduceOp::Sum).map(|_| ()).map_err(|e| anyhow!("ncclAllReduce: {e:?}"))
            }),
            Fused::F64(v) => self.round_trip(v, |c: &Comm, d: &mut _| {
                c.all_reduce_in_place(d, &ReduceOp::Sum).map(|_| ()).map_err(|e| anyhow!("ncclAllReduce: {e:?}"))
            }),
        }
    }
    fn broadcast(&self, buf: &mut Fused, root: usize) -> Result<()> {
        let root = root as i32;
        match buf {
            Fused::F32(v) => self.round_trip(v, |c: &Comm, d: &mut _| {
                c.broadcast_in_place(d, root).map(|_| ()).map_err(|e| anyhow!("ncclBroadcast: {e:?}"))
            }),
            Fused::F64(v) => self.round_trip(v, |c: &Comm, d: &mut _| {
                c.broadcast_in_place(d, root).map(|_| ()).map_err(|e| anyhow!("ncclBroadcast: {e:?}"))
            }),
        }
    }
}
