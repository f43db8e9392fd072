//! [`Collective`] over MPI (the `mpi` crate, e.g. on Debian's OpenMPI), for processes started
//! by `mpirun`. Built with the cargo feature `mpi`.

use super::distributed::{Collective, Fused};
use anyhow::{anyhow, Result};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

/// The MPI world of this process (initialised once; finalised when dropped).
pub struct MpiCollective {
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
}

impl MpiCollective {
    /// Initialises MPI (a process started without `mpirun` is a world of one).
    pub fn init() -> Result<MpiCollective> {
        let universe = mpi::initialize().ok_or_else(|| anyhow!("MPI is already initialised in this process"))?;
        let world = universe.world();
        Ok(MpiCollective { _universe: universe, world })
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn all_reduce_sum(&self, buf: &mut Fused) -> Result<()> {
        match buf {
            Fused::F32(v) => {
                let send = v.clone();
                self.world.all_reduce_into(&send[..], &mut v[..], SystemOperation::sum());
            }
            Fused::F64(v) => {
                let send = v.clone();
                self.world.all_reduce_into(&send[..], &mut v[..], SystemOperation::sum());
            }
        }
        Ok(())
    }
    fn broadcast(&self, buf: &mut Fused, root: usize) -> Result<()> {
        let root = self.world.process_at_rank(root as i32);
        match buf {
            Fused::F32(v) => root.broadcast_into(&mut v[..]),
            Fused::F64(v) => root.broadcast_into(&mut v[..]),
        }
        Ok(())
    }
}

impl MpiCollective {
    /// Rank `root`'s bytes to every rank, in place (e.g. the NCCL unique id).
    pub fn broadcast_bytes(&self, buf: &mut [std::ffi::c_char], root: usize) -> Result<()> {
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }
}
