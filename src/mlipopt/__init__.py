"""mlipopt: the optimizer as a first-class, measured design axis of MLIP training.

The papers cited in the source (docs/references.md):

* Harari et al. — G. Harari, Y. Zimmermann, O. T. Kulseng, L. Zichi, C. W. Tan, M. L. Descoteaux,
  B. Kozinsky, "Beyond Adam: SOAP and Muon for Faster, Label-Efficient Training of Machine Learning
  Interatomic Potentials" (Muon, SOAP, SOAP-Muon for NequIP/Allegro; sparse force supervision, eq. 11;
  the study protocol of its appendix B).
* Liu et al. — X. Liu, Y. Wang, T. Zhao et al., "Beyond Adam: Disentangling Optimizer Effects in the
  Fine-Tuning of Atomistic Foundation Models" (first-order optimizers and L-BFGS refinement for
  fine-tuning; the preconditioning view of its appendix A).
"""

__version__ = "0.1.0"
